"""Pasting patches on uint8 images in NumPy, on threads, bit for bit as TensorFlow did it.

:func:`warp_windows` is TensorFlow's ``ImageProjectiveTransformV3`` (bilinear, ``fill_mode=CONSTANT``,
fill 0; the affine rows :func:`~advpatch.patches.geometry.transforms` makes) written out in float32
with the kernel's own order of operations, so its results are the same bits::

    x = (t0 * col + t1 * row) + t2          y = (t3 * col + t4 * row) + t5
    top = (floor(x) + 1 - x) * f(y0, x0) + (x - floor(x)) * f(y0, x0 + 1)      (bottom: y0 + 1)
    out = (floor(y) + 1 - y) * top + (y - floor(y)) * bottom

reading 0 outside the canvas. :func:`blend` is the step that followed it (``base + m * (p - base)``,
clipped, ``round`` half to even, to uint8). Each runs on a window around each patch only (see
:func:`~advpatch.patches.patchset.apply_patches`), a chunk of images per call, chunks on threads
(:func:`advpatch.parallel.in_parallel`: NumPy releases Python's lock), each writing its own images:
the bytes do not depend on the number of threads. tests/test_patches.py checks them against
TensorFlow's op.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

F32 = np.float32
PAD = 2
"""Zero pixels around each padded canvas: a neighbour index clipped to [-2, side] reads 0 wherever
TensorFlow's reads its fill value."""

CHUNK_PIXELS = 1 << 17
"""Window pixels warped in one call (per thread): with its float32 temporaries a call holds about
40 bytes per pixel and channel, a few MB, whatever the batch size."""


def padded(canvases: np.ndarray) -> Tuple[np.ndarray, int]:
    """[k, P, P, K] canvases -> ([k * (P + 2 PAD)^2, K] float32 rows, padded side)."""
    c = np.pad(np.asarray(canvases, F32), ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    return np.ascontiguousarray(c.reshape(-1, c.shape[-1])), c.shape[1]


def coordinates(rows: np.ndarray, wh: int, ww: int, origin: Optional[Tuple[np.ndarray, np.ndarray]] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Where each pixel of each wh x ww window reads the canvas: (x, y) float32 [n, wh, ww], by
    ``rows[i]`` (output pixel -> canvas pixel). ``origin`` (oy, ox): window pixel (j, i) is output
    pixel (ox + j, oy + i) of ``rows`` (else ``rows`` are the window's own)."""
    r = rows.astype(F32)[:, :, None, None]
    col, row = np.arange(ww, dtype=F32), np.arange(wh, dtype=F32)[:, None]
    if origin is not None:
        col = (origin[1][:, None] + np.arange(ww)).astype(F32)[:, None, :]
        row = (origin[0][:, None] + np.arange(wh)).astype(F32)[:, :, None]
    x = r[:, 0] * col + r[:, 1] * row
    x += r[:, 2]
    y = r[:, 3] * col + r[:, 4] * row
    y += r[:, 5]
    return x, y


def sample(flat: np.ndarray, side: int, index: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[m, K] float32: canvas ``index`` of ``flat`` (see :func:`padded`; ``side`` its padded
    side) read bilinearly at points (``x``, ``y``) ([m] each), 0 outside it."""
    x0, y0 = np.floor(x), np.floor(y)
    hi = side - 2 * PAD  # the canvas's own side: indices -2 .. side read zeros beyond it
    at = (np.clip(y0, -PAD, hi).astype(np.intp) + PAD + np.asarray(index, np.intp) * side) * side
    at += np.clip(x0, -PAD, hi).astype(np.intp) + PAD
    wx1 = x - x0
    wx0 = x0 + 1
    wx0 -= x
    wy1 = y - y0
    wy0 = y0 + 1
    wy0 -= y
    wx0, wx1, wy0, wy1 = (w[:, None] for w in (wx0, wx1, wy0, wy1))
    top: np.ndarray = np.take(flat, at, axis=0)
    top *= wx0
    top += np.take(flat, at + 1, axis=0) * wx1
    at += side
    bottom = np.take(flat, at, axis=0)
    bottom *= wx0
    at += 1
    bottom += np.take(flat, at, axis=0) * wx1
    top *= wy0
    bottom *= wy1
    top += bottom
    return top


def warp_windows(flat: np.ndarray, side: int, index: np.ndarray, rows: np.ndarray, wh: int, ww: int,
                 origin: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """[n, wh, ww, K] float32: canvas ``index[i]`` warped by ``rows[i]`` onto a wh x ww window
    (see :func:`coordinates` and :func:`sample`), every pixel."""
    x, y = coordinates(rows, wh, ww, origin)
    k = np.repeat(np.asarray(index, np.intp), wh * ww)
    return sample(flat, side, k, x.ravel(), y.ravel()).reshape(len(rows), wh, ww, -1)


def masked(windows: np.ndarray, mask_flat: np.ndarray, side: int, index: np.ndarray, rows: np.ndarray,
           pixels: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray],
           origin: Optional[Tuple[np.ndarray, np.ndarray]] = None, divide: bool = False) -> np.ndarray:
    """uint8 ``windows`` [n, wh, ww, C] patched: the mask (``mask_flat``, one channel) warped by
    ``rows``, and where it is not 0 (elsewhere the blend gives back the image's own byte) the
    blend with ``pixels(points, image, x, y)`` ([m, C] float32 at those points: flat window
    indices, their image in the chunk, where they read the canvas)."""
    _, wh, ww, c = windows.shape
    x, y = coordinates(rows, wh, ww, origin)
    hi = side - 2 * PAD  # beyond (-1, hi) on either axis all four neighbours are off the canvas: the mask is 0
    points = np.flatnonzero((x > -1) & (x < hi) & (y > -1) & (y < hi))
    x, y = x.ravel()[points], y.ravel()[points]
    image = points // (wh * ww)
    m = sample(mask_flat, side, np.asarray(index, np.intp)[image], x, y)[:, 0]
    keep = np.flatnonzero(m)
    points, image, x, y, m = points[keep], image[keep], x[keep], y[keep], m[keep]
    out: np.ndarray = windows.copy()
    flat_out = out.reshape(-1, c)
    flat_out[points] = blend(flat_out[points], m[:, None], pixels(points, image, x, y), divide)
    return out


def blend(window: np.ndarray, mask: np.ndarray, pixels: np.ndarray, divide: bool = False) -> np.ndarray:
    """uint8 ``window`` with ``pixels`` (float [0, 1]) over it through ``mask``:
    ``round(clip(base + mask * (pixels - base)) * 255)``, ``base = window * float32(1 / 255)``
    (``divide``: ``window / 255``, as a canvas set's blend has it: a bit apart, now and then)."""
    base = window.astype(F32)
    if divide:
        base /= F32(255)
    else:
        base *= F32(1 / 255)
    out = pixels - base
    out *= mask
    out += base
    np.clip(out, 0, 1, out=out)
    out *= F32(255)
    np.rint(out, out=out)
    return out.astype(np.uint8)


def paste(images: np.ndarray, out: np.ndarray, oy: np.ndarray, ox: np.ndarray, wh: int, ww: int,
          patched: Callable[[slice, np.ndarray], np.ndarray], n_workers: int = 0,
          chunk: Optional[int] = None) -> None:
    """For each image, ``out[i]``'s window at (``oy[i]``, ``ox[i]``) of wh x ww becomes
    ``patched(chunk_slice, windows)`` of its chunk (uint8 windows in, uint8 windows out); the
    rest of ``out`` is left as it is. Chunks of ``chunk`` images (default: :data:`CHUNK_PIXELS`
    window pixels) on threads."""
    from advpatch.parallel import in_parallel

    n = len(images)
    chunk = chunk or max(1, CHUNK_PIXELS // (wh * ww))
    small = wh * ww < 1024  # small windows: one fancy index; large ones: a slice per image

    def one(c: int) -> None:
        sl = slice(c * chunk, min(n, (c + 1) * chunk))
        b = np.arange(sl.start, sl.stop)
        if small:
            ii = oy[sl, None, None] + np.arange(wh)[None, :, None]
            jj = ox[sl, None, None] + np.arange(ww)[None, None, :]
            out[b[:, None, None], ii, jj] = patched(sl, images[b[:, None, None], ii, jj])
            return
        windows = np.stack([images[i, oy[i]:oy[i] + wh, ox[i]:ox[i] + ww] for i in b])
        for i, w in zip(b, patched(sl, windows)):
            out[i, oy[i]:oy[i] + wh, ox[i]:ox[i] + ww] = w

    in_parallel(one, -(-n // chunk), n_workers)

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

Every array is planar (a channel's values in one run: ``[K, m]``), so each pass is one
contiguous NumPy loop over ``m`` values: NumPy broadcasting a ``[m, 1]`` weight over ``[m, K]``
pixels runs its inner loop ``K`` values at a time, four times slower. A neighbour's value is read
through an offset view of its plane (``plane[1:]`` at ``at`` is ``plane[at + 1]``), so one index
array serves all four neighbours.

The common case, a patch set's own pixels on contiguous images (:func:`paste_masked` with
``pixels=None``), runs as one compiled loop instead (:func:`_kernel`, :func:`advpatch.parallel.compiled`): the same
operations on each pixel in the same order, so the same bits (tests/test_patches.py compares the two
and TensorFlow), in one pass where NumPy makes some forty over each chunk.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, Iterator, Optional, Tuple

import numpy as np

from advpatch.parallel import made_once

log = logging.getLogger(__name__)

F32 = np.float32
PAD = 2
"""Zero pixels around each padded canvas: a neighbour index clipped to [-2, side] reads 0 wherever
TensorFlow's reads its fill value."""

CHUNK_PIXELS = 1 << 17
"""Window pixels warped in one call (per thread): with its float32 temporaries a call holds about
40 bytes per pixel and channel, a few MB, whatever the batch size."""

MIN_CHUNK_PIXELS = 1 << 16
"""Fewer window pixels than this are not split over threads: on less, the threads wait for Python's
lock between NumPy's calls longer than they compute (a batch of 256 MNIST digits runs 15% slower on
two threads than on one)."""

MIN_COMPILED_PIXELS = 1 << 13
"""Fewer window pixels than this are not split over threads by the compiled loop (it holds no lock:
only a thread's hand-over is left to pay for)."""

Weights = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def padded(canvases: np.ndarray) -> Tuple[np.ndarray, int]:
    """[k, P, P, K] canvases -> ([K, k * (P + 2 PAD)^2] float32 planes, one per channel, padded side)."""
    c = np.pad(np.asarray(canvases, F32), ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    return np.ascontiguousarray(np.moveaxis(c, -1, 0).reshape(c.shape[-1], -1)), c.shape[1]


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


def neighbours(side: int, index: np.ndarray, x: np.ndarray, y: np.ndarray, inside: bool = False) -> Weights:
    """Where points (``x``, ``y``) ([m] each) of canvas ``index`` read a padded plane (see
    :func:`padded`; ``side`` its padded side): (``at``, the flat index of each point's top-left
    neighbour, and the bilinear weights wx0, wx1, wy0, wy1). ``inside``: every point is in
    (-1, canvas side) on both axes (so no neighbour index needs clipping)."""
    x0, y0 = np.floor(x), np.floor(y)
    hi = side - 2 * PAD  # the canvas's own side: indices -2 .. side read zeros beyond it
    if inside:
        at = (y0.astype(np.intp) + (PAD + np.asarray(index, np.intp) * side)) * side
        at += x0.astype(np.intp)
        at += PAD
    else:
        at = (np.clip(y0, -PAD, hi).astype(np.intp) + PAD + np.asarray(index, np.intp) * side) * side
        at += np.clip(x0, -PAD, hi).astype(np.intp) + PAD
    wx1 = x - x0
    wx0 = x0
    wx0 += 1
    wx0 -= x
    wy1 = y - y0
    wy0 = y0
    wy0 += 1
    wy0 -= y
    return at, wx0, wx1, wy0, wy1


def bilinear(plane: np.ndarray, side: int, weights: Weights) -> np.ndarray:
    """[m] float32: one padded ``plane`` read at the points ``weights`` (:func:`neighbours`) describe."""
    at, wx0, wx1, wy0, wy1 = weights
    top = np.take(plane, at)
    top *= wx0
    part = np.take(plane[1:], at)
    part *= wx1
    top += part
    bottom = np.take(plane[side:], at)
    bottom *= wx0
    np.take(plane[side + 1:], at, out=part)
    part *= wx1
    bottom += part
    top *= wy0
    bottom *= wy1
    top += bottom
    return top


def sample(planes: np.ndarray, side: int, index: np.ndarray, x: np.ndarray, y: np.ndarray,
           inside: bool = False) -> np.ndarray:
    """[K, m] float32: canvas ``index`` of ``planes`` (see :func:`padded`) read bilinearly at points
    (``x``, ``y``) ([m] each), 0 outside it (``inside``: as :func:`neighbours`)."""
    weights = neighbours(side, index, x, y, inside)
    out = np.empty((len(planes), len(x)), F32)
    for k, plane in enumerate(planes):
        out[k] = bilinear(plane, side, weights)
    return out


def warp_windows(planes: np.ndarray, side: int, index: np.ndarray, rows: np.ndarray, wh: int, ww: int,
                 origin: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """[n, wh, ww, K] float32: canvas ``index[i]`` warped by ``rows[i]`` onto a wh x ww window
    (see :func:`coordinates` and :func:`sample`), every pixel."""
    x, y = coordinates(rows, wh, ww, origin)
    k = np.repeat(np.asarray(index, np.intp), wh * ww)
    warped: np.ndarray = sample(planes, side, k, x.ravel(), y.ravel()).T.reshape(len(rows), wh, ww, -1)
    return warped


Pixels = Callable[[slice, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
Record = Callable[[slice, np.ndarray], None]


def paste_masked(images: np.ndarray, out: np.ndarray, oy: np.ndarray, ox: np.ndarray, wh: int, ww: int,
                 rows: np.ndarray, planes: np.ndarray, side: int, mask_index: np.ndarray,
                 pixels: Optional[Pixels], *,
                 origin: bool = False, divide: bool = False, n_workers: int = 0, chunk: Optional[int] = None,
                 record: Optional[Record] = None) -> None:
    """uint8 ``images`` [n, H, W, C] patched into ``out`` (``images`` itself, or a copy of it): in
    each image's wh x ww window at (``oy[i]``, ``ox[i]``), the mask (the last of ``planes``; canvas
    ``mask_index[i]``) warped by ``rows[i]`` (the window's own transform, or with ``origin`` the
    image's), and where it is not 0 (elsewhere the blend gives back the image's own byte, so only
    those pixels are read and written) the blend with ``pixels(sl, image, i, j, x, y)`` ([C, m]
    float32 at those points: their image in the chunk ``sl``, their window row and column, where
    they read the canvas); ``pixels=None``: the first C ``planes`` are the patches' channels, read
    at the same points. Chunks of ``chunk`` images (default: :data:`CHUNK_PIXELS` window pixels,
    and a chunk per worker where each holds :data:`MIN_CHUNK_PIXELS`) on threads, each reading and
    writing its own images.
    ``record(sl, sums)``: each chunk's :func:`~advpatch.evaluation.change_sums` (int64 [chunk, 5],
    image by image) of the bytes the paste changed."""
    from advpatch.evaluation import change_sums
    from advpatch.parallel import in_parallel, workers

    n, h, w, c = images.shape
    count = n_workers or workers()
    flat = images.reshape(-1) if images.flags.c_contiguous and out.flags.c_contiguous else None
    flat_out = out.reshape(-1) if flat is not None else None
    fast = pixels is None and flat is not None and not compiled_off()
    least = (MIN_COMPILED_PIXELS if fast else MIN_CHUNK_PIXELS) // (wh * ww)
    chunk = chunk or max(1, min(CHUNK_PIXELS // (wh * ww), max(-(-n // count), least)))
    corner = (((np.arange(n) * h + oy) * w + ox) * c).astype(np.intp)  # each window's first byte in the images

    if fast:
        kernel = _kernel()
        rows32 = np.ascontiguousarray(rows, F32)
        at_y, at_x = np.asarray(oy, np.intp), np.asarray(ox, np.intp)
        index = np.ascontiguousarray(mask_index, np.intp)
        canvas = np.ascontiguousarray(np.asarray(planes, F32).T)  # [pixel, channels + mask]

        def compiled(k: int) -> None:
            sl = slice(k * chunk, min(n, (k + 1) * chunk))
            sums = np.zeros((sl.stop - sl.start, 5), np.int64)
            kernel(flat, flat_out, corner, w, c, wh, ww, rows32, canvas, side, index, at_y, at_x, origin, divide,
                   sl.start, sl.stop, sums, record is not None)
            if record is not None:
                record(sl, sums)

        in_parallel(compiled, -(-n // chunk), count)
        return

    hi = side - 2 * PAD  # beyond (-1, hi) on either axis all four neighbours are off the canvas: the mask is 0
    offsets = ((np.arange(wh)[:, None] * w + np.arange(ww)) * c).astype(np.intp).ravel()  # window -> image byte

    def one(k: int) -> None:
        sl = slice(k * chunk, min(n, (k + 1) * chunk))
        x, y = coordinates(rows[sl], wh, ww, (oy[sl], ox[sl]) if origin else None)
        inside = x > -1
        inside &= x < hi
        inside &= y > -1
        inside &= y < hi
        points = np.flatnonzero(inside)
        x, y = x.ravel()[points], y.ravel()[points]
        image = points // (wh * ww)
        points -= image * (wh * ww)  # the point in its window
        weights = neighbours(side, np.asarray(mask_index[sl], np.intp)[image], x, y, inside=True)
        m = bilinear(planes[-1], side, weights)
        keep = np.flatnonzero(m)
        if len(keep) < len(m):
            image, points, m = image[keep], points[keep], m[keep]
            if pixels is None:
                weights = tuple(v[keep] for v in weights)  # type: ignore[assignment]
            else:
                x, y = x[keep], y[keep]
        if pixels is None:  # the patch's own planes
            new = np.empty((c, len(m)), F32)
            for ch in range(c):
                new[ch] = bilinear(planes[ch], side, weights)
        else:
            i, j = np.divmod(points, ww)
            new = pixels(sl, image, i, j, x, y)
        before = np.empty((c, len(m)), np.uint8)
        if flat is not None and flat_out is not None:
            at = corner[sl][image]
            at += offsets[points]
            for ch in range(c):
                np.take(flat[ch:], at, out=before[ch])
        else:
            i, j = np.divmod(points, ww)
            where = (image + sl.start, oy[sl][image] + i, ox[sl][image] + j)
            before[:] = images[where].T
        after = blend(before, m, new, divide)
        if flat is not None and flat_out is not None:
            for ch in range(c):
                flat_out[ch:][at] = after[ch]
        else:
            out[where] = after.T
        if record is not None:
            record(sl, change_sums(before, after, np.bincount(image, minlength=sl.stop - sl.start)))

    in_parallel(one, -(-n // chunk), count)


def compiled_off() -> bool:
    """``ADVPATCH_NUMPY_PASTE=1``: NumPy's passes even where the compiled loop would run (the tests
    compare the two; a way round a machine where Numba cannot compile)."""
    import os

    return os.environ.get("ADVPATCH_NUMPY_PASTE", "") == "1"


@made_once
def _kernel() -> Any:
    """:func:`paste_masked`'s compiled loop, built at first use (importing Numba takes 0.4 s):
    ``kernel(flat, flat_out, corner, w, c, wh, ww, rows, canvas, side, index, oy, ox, origin, divide,
    lo, hi, sums, measure)``. For each image ``i`` in ``lo:hi`` and each pixel of its window, row by
    row: :func:`coordinates`, the test ``paste_masked`` makes, the mask by :func:`bilinear` (with
    :func:`neighbours`' index and weights), and where it is not 0 each channel's patch value and
    :func:`blend`, written to ``flat_out``. ``canvas`` is the padded planes side by side ([pixel,
    C + 1]: the patch's channels, then the mask), so a point's sixteen reads share four cache lines.
    With ``measure``, each image's :func:`~advpatch.evaluation.change_sums` of the bytes it changed,
    in ``sums[i - lo]`` (the same integers, in the same pass)."""
    from advpatch.parallel import compiled

    one, full, inv, zero = F32(1), F32(255), F32(1 / 255), F32(0)

    def kernel(flat: np.ndarray, flat_out: np.ndarray, corner: np.ndarray, w: int, c: int, wh: int, ww: int,
               rows: np.ndarray, canvas: np.ndarray, side: int, index: np.ndarray, oy: np.ndarray, ox: np.ndarray,
               origin: bool, divide: bool, lo: int, hi: int, sums: np.ndarray, measure: bool) -> None:
        edge = F32(side - 2 * PAD)  # beyond (-1, edge) all four neighbours are off the canvas: the mask is 0
        last = canvas.shape[1] - 1  # the mask's column
        hist = np.zeros(256, np.int64)  # #(before = v) - #(after = v) over an image's changed bytes
        for i in range(lo, hi):
            t0, t1, t2, t3, t4, t5 = rows[i, 0], rows[i, 1], rows[i, 2], rows[i, 3], rows[i, 4], rows[i, 5]
            shift = PAD + index[i] * side
            top_d, l1, l2, cross = 0, 0, 0, 0
            hist[:] = 0
            for a in range(wh):
                row = F32(oy[i] + a) if origin else F32(a)
                for b in range(ww):
                    col = F32(ox[i] + b) if origin else F32(b)
                    x = t0 * col + t1 * row
                    x = x + t2
                    y = t3 * col + t4 * row
                    y = y + t5
                    if not (x > -one and x < edge and y > -one and y < edge):
                        continue
                    x0, y0 = np.floor(x), np.floor(y)
                    at = (np.intp(y0) + shift) * side + np.intp(x0) + PAD
                    wx1, wx0 = x - x0, (x0 + one) - x
                    wy1, wy0 = y - y0, (y0 + one) - y
                    top = canvas[at, last] * wx0 + canvas[at + 1, last] * wx1
                    bottom = canvas[at + side, last] * wx0 + canvas[at + side + 1, last] * wx1
                    m = top * wy0 + bottom * wy1
                    if m == 0:
                        continue
                    byte = corner[i] + (a * w + b) * c
                    for ch in range(c):
                        top = canvas[at, ch] * wx0 + canvas[at + 1, ch] * wx1
                        bottom = canvas[at + side, ch] * wx0 + canvas[at + side + 1, ch] * wx1
                        value = top * wy0 + bottom * wy1
                        old = flat[byte + ch]
                        base = F32(old) / full if divide else F32(old) * inv
                        v = (value - base) * m + base
                        v = min(max(v, zero), one) * full
                        new = np.uint8(np.rint(v))
                        flat_out[byte + ch] = new
                        if measure and new != old:  # a byte kept adds nothing to any sum
                            p, q = np.int64(old), np.int64(new)
                            d = q - p
                            top_d = max(top_d, abs(d))
                            l1 += abs(d)
                            l2 += d * d
                            cross += d * (p + q)
                            hist[p] += 1
                            hist[q] -= 1
            if measure:
                gap, run = 0, 0
                for k in range(255):
                    run += hist[k]
                    gap += abs(run)
                sums[i - lo, 0], sums[i - lo, 1], sums[i - lo, 2], sums[i - lo, 3] = top_d, l1, l2, cross
                sums[i - lo, 4] = gap

    return compiled(kernel)


def blend(window: np.ndarray, mask: np.ndarray, pixels: np.ndarray, divide: bool = False) -> np.ndarray:
    """uint8 ``window`` with ``pixels`` (float [0, 1]) over it through ``mask`` (broadcast against
    them): ``round(clip(base + mask * (pixels - base)) * 255)``, ``base = window * float32(1 / 255)``
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


def warm() -> int:
    """Compile every loop of :func:`advpatch.parallel.compiled` (into the cache, where there is one)
    on a few tiny images, called as the steps call them, on this thread alone (no thread is started:
    the local runs' warm process calls this before it forks). The images run this at build time
    (``python -m advpatch.patches.paste``). Returns how many loops are ready."""
    from advpatch import evaluation, patches

    rng = np.random.default_rng(0)
    for c in (1, 3):
        images = rng.integers(0, 256, (4, 16, 16, c), dtype=np.uint8)
        patch = rng.random((1, 16, 16, c), dtype=np.float32)
        patch_set = patches.PatchSet(patch, patches.make_mask(16, "circle")[None], np.array([0]), ["a", "b"],
                                     images.shape[1:])
        where = patches.sample_placements(rng, 4, (16, 16), rotation_max=45, scale_min=0.3, scale_max=0.6)
        out = patches.apply_patches(images, patch_set, np.zeros(4, np.int32), where, n_workers=1,
                                    record=lambda sl, sums: None)
        evaluation.distance_stats(images, out)  # squares_of, change_sums
    loops = (_kernel(), evaluation._change_sums(), evaluation._square_sums())
    return sum(len(loop.signatures) > 0 for loop in loops)


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """The compiled loops loaded (:func:`warm`) on a thread while the block runs, joined at its end:
    a deployment opens its data and draws its placements meanwhile, instead of waiting for Numba's
    first load (0.4-0.6 s: its registries, imported at a first call, even from the cache) at its
    first paste. A thread needing a loop before it is ready waits for it (:func:`~advpatch.parallel.made_once`,
    Numba's own compile lock). An error here is left to the step's own first call, which raises it."""
    if compiled_off():
        yield
        return

    def load() -> None:
        try:
            warm()
        except Exception as e:  # the step's first paste meets it again and raises it
            log.debug("loading the compiled loops on a thread failed: %s", e)

    thread = threading.Thread(target=load, name="advpatch-load", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


if __name__ == "__main__":  # python -m advpatch.patches.paste: the package's own module (not __main__'s copy) warmed
    import os

    from advpatch.patches import paste

    print(f"compiled {paste.warm()} loops (cache: {os.environ.get('NUMBA_CACHE_DIR') or 'beside the source'})")

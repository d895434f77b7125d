"""Where a patch goes on an image, and the warp that puts it there.

* :func:`sample_placements` draws each placement: a rotation in ``[-rotation_max, rotation_max]``
  degrees, a scale in ``[scale_min, scale_max]`` (the patch's side as a share of the image's shorter
  side) and a position (``random``: anywhere the patch's mask, rotated, lies wholly inside the image,
  so a disk reaches the edges at any angle; ``center``: the image centre). Along an axis where the
  rotated patch is larger than the image it is centred. Drawn with NumPy from a seeded generator:
  same seed, same placements.
* :func:`transforms` turns placements into the 8-number projective transforms TensorFlow's
  ``ImageProjectiveTransformV3`` takes (output pixel -> patch pixel); :func:`warp` applies them with
  ``fill_mode=CONSTANT`` and fill 0, so outside its mask a patch never touches the image (ART
  1.20.1 uses REFLECT and tiles mirrored copies of the patch over most of the image).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from advpatch import params

Tensor = Any
"""A TensorFlow tensor (or what TensorFlow converts to one): TensorFlow is untyped."""


@dataclass
class Placements:
    """Where each of ``n`` patches lands: rotation (degrees), scale (share of the image's shorter
    side), centre (x, y in pixel coordinates: pixel i spans [i - 0.5, i + 0.5])."""

    angle: np.ndarray
    scale: np.ndarray
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.angle)

    def take(self, index: Union[slice, np.ndarray]) -> "Placements":
        return Placements(self.angle[index], self.scale[index], self.x[index], self.y[index])


def mask_outline(mask: Optional[np.ndarray] = None) -> np.ndarray:
    """[k, 2] points (x, y), in units of the patch's side and relative to its centre, whose convex
    hull holds every pixel the mask touches (``mask > 0``): the outer corners of each row's first and
    last such pixel, only those on that hull (a point inside it never sets an extent). The patch's
    extent under any rotation is the extent of these points. ``None``: the whole square."""
    if mask is None:
        return np.array([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]])
    touched = np.ascontiguousarray(np.asarray(mask) > 0)
    outline: np.ndarray = _outline(touched.tobytes(), touched.shape).copy()
    return outline


@functools.lru_cache(maxsize=16)
def _outline(touched_bytes: bytes, shape: Tuple[int, int]) -> np.ndarray:
    """:func:`mask_outline` of the mask whose pixels ``mask > 0`` are ``touched_bytes`` (each batch
    of a deployment asks for the same mask's: made once)."""
    touched = np.frombuffer(touched_bytes, bool).reshape(shape)
    rows = np.flatnonzero(touched.any(axis=1))
    if len(rows) == 0:
        raise params.ParameterError("the patch mask is empty: it covers no pixel")
    first = touched[rows].argmax(axis=1)
    last = shape[1] - 1 - touched[rows, ::-1].argmax(axis=1)
    c = (np.array(shape[::-1], np.float64) - 1) / 2  # (x, y) of the centre
    points = [np.stack([xs, rows + dy], 1) for xs in (first - 0.5, last + 0.5) for dy in (-0.5, 0.5)]
    outline: np.ndarray = (_hull(np.concatenate(points)) - c) / max(shape)
    return outline


def _hull(points: np.ndarray) -> np.ndarray:
    """The points of ``points`` [k, 2] on their convex hull (the edges' points kept: Andrew's
    monotone chain, dropping only turns the wrong way), each once."""
    pts = [tuple(p) for p in np.unique(points, axis=0)]  # sorted by x, then y
    if len(pts) < 3:
        return np.array(pts, np.float64)

    def half(seq: List[Tuple[float, float]]) -> List[Tuple[float, float]]:
        chain: List[Tuple[float, float]] = []
        for p in seq:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                                       - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) < 0:
                chain.pop()
            chain.append(p)
        return chain

    return np.unique(np.array(half(pts) + half(pts[::-1]), np.float64), axis=0)


def half_extents(outline: np.ndarray, side: np.ndarray, rad: np.ndarray, chunk: int = 2048
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Half the width and height (pixels) of the axis-aligned box around the rotated outline (``chunk``
    placements at a time: their [chunk, points] temporaries stay in the cache)."""
    hx, hy = np.empty(len(side)), np.empty(len(side))
    px, py = outline[:, 0], outline[:, 1]  # mask_outline's points are each once (a point twice: the same maxima)
    for i in range(0, len(side), chunk):
        cos, sin = np.cos(rad[i:i + chunk])[:, None], np.sin(rad[i:i + chunk])[:, None]
        hx[i:i + chunk] = side[i:i + chunk] * np.abs(cos * px - sin * py).max(axis=1)
        hy[i:i + chunk] = side[i:i + chunk] * np.abs(sin * px + cos * py).max(axis=1)
    return hx, hy


def sample_placements(
    rng: np.random.Generator,
    n: int,
    image_hw: Tuple[int, int],
    *,
    rotation_max: float,
    scale_min: float,
    scale_max: float,
    location: str = "random",
    patch_scale: float = 0.0,
    mask: Optional[np.ndarray] = None,
) -> Placements:
    """Draw ``n`` placements. ``patch_scale`` > 0 fixes the scale; 0 draws it from
    ``[scale_min, scale_max]``.

    With ``location="random"`` the patch's visible part (where ``mask`` > 0; ``None``: the whole
    square) lies wholly inside the image: a circular patch may reach the image's edges at any
    rotation, a rotated square only as far as its corners allow. Along an axis where the rotated
    patch is larger than the image it is centred, the placement that keeps most of it on the image.
    """
    h, w = image_hw
    angle = rng.uniform(-rotation_max, rotation_max, n) if rotation_max > 0 else np.zeros(n)
    scale = np.full(n, patch_scale) if patch_scale > 0 else rng.uniform(scale_min, scale_max, n)
    half_x, half_y = half_extents(mask_outline(mask), scale * min(h, w), np.deg2rad(angle))
    u = rng.uniform(-1.0, 1.0, (2, n))
    if location == "center":
        u[:] = 0.0
    x = (w - 1) / 2 + u[0] * np.clip(w / 2 - half_x, 0.0, None)
    y = (h - 1) / 2 + u[1] * np.clip(h / 2 - half_y, 0.0, None)
    f = np.float32
    return Placements(angle.astype(f), scale.astype(f), x.astype(f), y.astype(f))


def transforms(placements: Placements, patch_size: int, image_hw: Tuple[int, int]) -> np.ndarray:
    """[n, 8] projective transforms mapping each output pixel to the patch pixel it shows.

    The patch (``patch_size`` pixels square) is scaled to ``scale * min(H, W)`` pixels, rotated by
    ``angle`` and centred on (x, y).
    """
    zoom = placements.scale.astype(np.float64) * min(image_hw) / patch_size
    rad = np.deg2rad(placements.angle.astype(np.float64))
    cos, sin = np.cos(rad) / zoom, np.sin(rad) / zoom
    c = (patch_size - 1) / 2
    x, y = placements.x.astype(np.float64), placements.y.astype(np.float64)
    out = np.zeros((len(placements), 8), dtype=np.float32)
    out[:, 0], out[:, 1], out[:, 2] = cos, sin, c - (cos * x + sin * y)
    out[:, 3], out[:, 4], out[:, 5] = -sin, cos, c - (-sin * x + cos * y)
    return out


def make_mask(patch_size: int, shape: str) -> np.ndarray:
    """[P, P] float32 mask: ``square`` (all ones) or ``circle`` (a disk with a soft edge, as ART's)."""
    params.check(patch_shape=shape)
    if shape == "square":
        return np.ones((patch_size, patch_size), dtype=np.float32)
    g = np.linspace(-1, 1, patch_size)
    r2 = g[None, :] ** 2 + g[:, None] ** 2
    return (1 - np.clip(r2**40, 0, 1)).astype(np.float32)


def inverse_transforms(placements: Placements, patch_size: int, image_hw: Tuple[int, int]) -> np.ndarray:
    """[n, 8] the inverse of :func:`transforms`: patch pixel -> output pixel (for the gradient)."""
    zoom = placements.scale.astype(np.float64) * min(image_hw) / patch_size
    rad = np.deg2rad(placements.angle.astype(np.float64))
    cos, sin = np.cos(rad) * zoom, np.sin(rad) * zoom
    c = (patch_size - 1) / 2
    x, y = placements.x.astype(np.float64), placements.y.astype(np.float64)
    out = np.zeros((len(placements), 8), dtype=np.float32)
    out[:, 0], out[:, 1], out[:, 2] = cos, -sin, x - (cos - sin) * c
    out[:, 3], out[:, 4], out[:, 5] = sin, cos, y - (sin + cos) * c
    return out


def warp(canvases: Tensor, rows: Tensor, output_hw: Tensor) -> Tensor:
    """``canvases`` [B, P, P, K] warped by ``rows`` [B, 8] onto ``output_hw``; outside, 0."""
    import tensorflow as tf

    return tf.raw_ops.ImageProjectiveTransformV3(
        images=canvases, transforms=rows, output_shape=output_hw, fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT",
    )

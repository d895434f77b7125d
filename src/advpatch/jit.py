"""Compiled loops: the few per-pixel loops NumPy runs as many passes (a paste's warp and blend, a
patched image's distances) written once as plain loops and compiled by Numba.

One setting for all of them (:func:`compiled`): no fast-math (float32 operations in the order they
are written, each rounded, nothing fused: the same bits as NumPy's passes and TensorFlow's kernel;
tests/test_patches.py and tests/test_evaluation.py compare them), Python's lock released while they
run (threads share the cores: :func:`advpatch.parallel.in_parallel`), and the machine code cached
beside the source (``__pycache__``, else the user's cache folder; the images fill it at build time,
``images/Dockerfile.cpu``) so that a step compiles a loop once per machine, not once per run. Where
no cache folder can be written (a read-only file system) each process compiles its own (about a
second per loop).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def compiled(fn: F) -> F:
    """``fn`` compiled in nopython mode, releasing Python's lock, cached where a cache can be kept."""
    import numba

    def build(cache: bool) -> F:
        built: F = numba.jit(fn, cache=cache, nopython=True, nogil=True, boundscheck=False,  # type: ignore[assignment]
                             error_model="numpy")
        return built

    try:
        return build(cache=True)
    except RuntimeError:  # "cannot cache function ...: no locator available" (nowhere to write)
        return build(cache=False)

def warm() -> int:
    """Compile every loop (into the cache, where there is one) on a few tiny images, called as the
    steps call them, on this thread alone (no thread is started: the local runs' warm process calls
    this before it forks). The images run this at build time. Returns how many loops are ready."""
    import numpy as np

    from advpatch import evaluation, patches
    from advpatch.patches import paste

    rng = np.random.default_rng(0)
    for c in (1, 3):
        images = rng.integers(0, 256, (4, 16, 16, c), dtype=np.uint8)
        patch = rng.random((1, 16, 16, c), dtype=np.float32)
        patch_set = patches.PatchSet(patch, patches.make_mask(16, "circle")[None], np.array([0]), ["a", "b"],
                                     images.shape[1:])
        where = patches.sample_placements(rng, 4, (16, 16), rotation_max=45, scale_min=0.3, scale_max=0.6)
        squares = evaluation.squares_of(images)

        def record(sl: slice, counts: np.ndarray, before: np.ndarray, after: np.ndarray, squares: np.ndarray = squares,
                   size: int = 16 * 16 * c) -> None:
            evaluation.changed_distances(before, after, counts, squares[sl], size)

        patches.apply_patches(images, patch_set, np.zeros(4, np.int32), where, n_workers=1, record=record)
    loops = (paste._kernel(), evaluation._change_sums(), evaluation._square_sums())
    return sum(len(loop.signatures) > 0 for loop in loops)


if __name__ == "__main__":
    import os

    print(f"compiled {warm()} loops (cache: {os.environ.get('NUMBA_CACHE_DIR') or 'beside the source'})")

"""Work per image on every core a step has: threads, for work that releases Python's lock (image
codecs, resizing, NumPy), each call writing its own part of a shared result, so the result is the
same bytes whatever the number of threads.

And batches sized to a memory budget: a step's ``memory_budget_mb`` caps its ``batch_size`` to what
fits (:func:`capped`), so its peak memory does not grow with the batch size asked for (nor with the
data's size: the data streams). The figures are estimates from the arrays a batch holds; results do
not depend on the batch size, only the peak memory and the speed do.

And compiled loops (:func:`compiled`): the few per-pixel loops NumPy runs as many passes (a paste's
warp and blend, a patched image's distances) written once as plain loops and compiled by Numba,
with one setting for all of them: no fast-math (float32 operations in the order they are written,
each rounded, nothing fused: the same bits as NumPy's passes and TensorFlow's kernel; the tests
compare them), Python's lock released while they run (threads share the cores), and the machine
code cached beside the source (``__pycache__``, else ``NUMBA_CACHE_DIR`` or the user's cache
folder; the images fill it at build time) so that a step compiles a loop once per machine, not once
per run. Where no cache folder can be written, each process compiles its own (about a second a
loop). :func:`advpatch.patches.paste.warm` compiles them all."""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple, TypeVar

import numpy as np

from advpatch import settings

F = TypeVar("F", bound=Callable[..., Any])


def workers() -> int:
    """Threads (or processes) for work per image: ``ADVPATCH_WORKERS``, else the CPUs this process
    may run on (its affinity, which a container's cpuset sets), at most its cgroup's CPU quota (what
    a Kubernetes CPU limit sets: a pod limited to 2 CPUs on a 64-CPU node gets 2)."""
    value = os.environ.get(settings.ENV_WORKERS, "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpus()
    return max(1, min(count, quota)) if quota else count


def cgroup_cpus(path: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The CPUs a cgroup v2 quota allows (``cpu.max``: "quota period", rounded up), 0 if none."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
        return -(-int(quota) // int(period)) if quota != "max" and int(period) > 0 else 0
    except (OSError, ValueError):
        return 0


def in_parallel(fn: Callable[[int], None], n: int, n_workers: int = 0) -> None:
    """``fn(i)`` for every i in range(n), on ``n_workers`` threads (default :func:`workers`; in order
    on one). An exception is raised as the first failing ``i`` in order raised it. The threads are
    kept for the next call (starting threads costs more than a small call's work); a call made on
    one of them runs in order on it."""
    count = min(n_workers or workers(), n)
    if count <= 1 or getattr(_local, "inside", False):
        for i in range(n):
            fn(i)
        return
    from concurrent.futures import wait

    futures = [_pool(count).submit(fn, i) for i in range(n)]
    wait(futures)  # every call done (none still writing) before an error is raised
    for future in futures:
        future.result()


_local = threading.local()
_pools: Dict[Tuple[int, int], Any] = {}
_pools_lock = threading.Lock()


def _mark_inside() -> None:
    _local.inside = True


def _pool(count: int) -> Any:
    """A pool of ``count`` threads, made once (per process: a forked child makes its own)."""
    from concurrent.futures import ThreadPoolExecutor

    key = (os.getpid(), count)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(count, thread_name_prefix="advpatch", initializer=_mark_inside)
        return pool


def changed_images(a: np.ndarray, b: np.ndarray) -> int:
    """How many images of ``a`` differ from ``b`` (same shape) in any byte, chunks on threads."""
    n = len(a)
    if not n:
        return 0
    size = int(np.prod(a.shape[1:])) * a.itemsize
    chunk = max(1, (1 << 22) // max(size, 1))
    found = np.zeros(n, bool)

    def one(k: int) -> None:
        sl = slice(k * chunk, min(n, (k + 1) * chunk))
        found[sl] = (a[sl] != b[sl]).reshape(sl.stop - sl.start, -1).any(axis=1)

    in_parallel(one, -(-n // chunk))
    return int(found.sum())


MIB = 2**20


def capped(batch_size: int, budget_mb: float, per_image_bytes: float) -> int:
    """``min(batch_size, what fits in budget_mb)``, at least 1."""
    fits = int(budget_mb * MIB // max(per_image_bytes, 1.0))
    return max(1, min(int(batch_size), fits))


def deploy_bytes(image_shape: Sequence[int]) -> float:
    """Per image of a deploy_patch batch: the batch as read, its patched copies, and the writer's
    share of them (uint8)."""
    return 3.0 * float(np.prod(image_shape))


def deploy_block(num_images: int, budget_mb: float, image_shape: Sequence[int]) -> int:
    """The images deploy_patch reads and patches at a time where its batches change no byte
    (:func:`advpatch.patches.deploy`'s ``block``): all that fit in ``budget_mb``, at least one. At
    28x28 a batch of 256 left a step's time to the per-batch work; the paste's threads share the
    block."""
    return capped(max(1, num_images), budget_mb, deploy_bytes(image_shape))


def model_bytes(model: Any, image_shape: Sequence[int]) -> float:
    """Per image of a forward pass: the uint8 batch, its float32 copy, and three times the largest
    layer output in float32 (a layer's input, its output and its work space: TensorFlow frees the
    outputs of the layers before)."""
    largest = 0.0
    for layer in _layers(model):
        try:
            shapes = layer.output.shape
        except (AttributeError, ValueError):
            continue
        for shape in (shapes if isinstance(shapes, (list, tuple)) and shapes and not isinstance(
                shapes[0], (int, type(None))) else [shapes]):
            largest = max(largest, float(np.prod([d for d in shape[1:] if d])))
    return float(np.prod(image_shape)) * (1 + 4) + 3 * 4 * largest


def _layers(model: Any) -> Iterator[Any]:
    """Every layer of ``model``, those of nested models included."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _layers(layer)


def made_once(make: Callable[[], F]) -> Callable[[], F]:
    """``make()`` (a compiled loop's maker) run once per process, by whichever thread asks first; a
    thread asking meanwhile waits for it and gets the same loop (a step loads its loops on a thread
    while it opens its data: :func:`advpatch.patches.paste.loading`)."""
    lock = threading.Lock()
    made: List[F] = []

    @functools.wraps(make)
    def get() -> F:
        if not made:
            with lock:
                if not made:
                    made.append(make())
        return made[0]

    return get


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

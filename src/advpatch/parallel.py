"""Work per image on every core a step has: threads, for work that releases Python's lock (image
codecs, resizing, NumPy), each call writing its own part of a shared result, so the result is the
same bytes whatever the number of threads."""

from __future__ import annotations

import os
from typing import Callable

from advpatch import settings


def workers() -> int:
    """Threads for work per image: ``ADVPATCH_WORKERS``, else the CPUs this process may run on (its
    affinity, which a container's cpuset sets)."""
    value = os.environ.get(settings.ENV_WORKERS, "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def in_parallel(fn: Callable[[int], None], n: int, n_workers: int = 0) -> None:
    """``fn(i)`` for every i in range(n), on ``n_workers`` threads (default :func:`workers`; in order
    on one). An exception is raised as the first failing ``i`` in order raised it."""
    count = n_workers or workers()
    if count <= 1 or n <= 1:
        for i in range(n):
            fn(i)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(count, n)) as pool:
        list(pool.map(fn, range(n)))

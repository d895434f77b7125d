"""Issue 24's faster deploy_patch, the same bytes: the paste's own record of the pixels it changed
gives the exact distances; shards written piece by piece are the bytes of the whole; the kept
thread pool."""

import io
import os
import threading

import numpy as np
import pytest

from advpatch import parallel, patches
from advpatch.evaluation import _uint8_distances, changed_distances, distance_stats
from advpatch.io.files import save_npz
from advpatch.patches.patchset import _patch_measured

CLASSES = [str(i) for i in range(10)]


def _sets(shape, rng):
    side = shape[0]
    yield patches.PatchSet(rng.random((2, side - 6, side - 6, shape[2]), dtype=np.float32),
                           np.stack([patches.make_mask(side - 6, "circle"), patches.make_mask(side - 6, "square")]),
                           np.array([1, 2]), CLASSES, shape)
    for mode, size in (("canvas", side), ("grid", side // 2)):
        yield patches.PatchSet(rng.random((4, size, size, shape[2]), dtype=np.float32),
                               np.stack([patches.make_mask(size, "circle")] * 4), np.array([1] * 4), CLASSES, shape,
                               settings={"conditioning": {"mode": mode, "grid": [2, 2]}})


@pytest.mark.parametrize("shape, workers", [((28, 28, 1), "1"), ((40, 40, 3), "3")])
def test_distances_from_the_changed_pixels_are_exact(shape, workers, monkeypatch):
    monkeypatch.setenv("ADVPATCH_WORKERS", workers)
    rng = np.random.default_rng(11)
    n = 57
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    images[3] = 0  # |x|^2 = 0: cosine similarity 1 by convention
    for ps in _sets(shape, rng):
        which = rng.integers(0, 1 if patches.conditioning_of(ps) else len(ps), n).astype(np.int16)
        where = patches.sample_placements(rng, n, shape[:2], rotation_max=40, scale_min=0.2, scale_max=0.9,
                                          mask=ps.masks.max(axis=0))
        expected = patches.apply_set(images, ps, which, where)
        patched = images.copy()
        got = _patch_measured(patched, ps, which, where, 16)
        np.testing.assert_array_equal(patched, expected)
        exact = distance_stats(images, expected)
        for k, v in exact.items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_changed_distances_ignore_pixels_that_did_not_change():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (9, 300), dtype=np.uint8)
    b = a.copy()
    b[:, 40:90] = rng.integers(0, 256, (9, 50), dtype=np.uint8)
    b[4] = a[4]  # nothing changed
    b[6, 40:90] = a[6, 40:90]
    b[6, 41] ^= 1  # one pixel
    exact = _uint8_distances(a, b)
    squares = (a.astype(np.int64) ** 2).sum(1)
    got = changed_distances(a[:, 30:100].ravel(), b[:, 30:100].ravel(), np.full(9, 70), squares, 300)
    for k, v in exact.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert got["cosine_similarity"][4] == 1.0 and got["l_inf"][4] == 0.0


@pytest.mark.parametrize("dtype, shape", [(np.uint8, (5, 7, 3)), (np.int32, ()), (np.float32, (4,)), (bool, ())])
def test_a_shard_written_in_pieces_is_the_bytes_of_the_whole(dtype, shape):
    rng = np.random.default_rng(1)
    pieces = [rng.integers(0, 200, (k, *shape)).astype(dtype) for k in (3, 0, 11, 1)]
    pieces[2] = pieces[2][::-1]  # a view that is not contiguous
    whole, split = io.BytesIO(), io.BytesIO()
    save_npz(whole, a=np.concatenate(pieces), b=np.arange(4))
    save_npz(split, a=pieces, b=np.arange(4))
    assert split.getvalue() == whole.getvalue()
    split.seek(0)
    with np.load(split) as npz:
        np.testing.assert_array_equal(npz["a"], np.concatenate(pieces))


def test_in_parallel_keeps_its_threads_runs_nested_calls_in_order_and_waits_before_raising():
    seen, names, done = [], set(), []

    def inner(i):
        seen.append(i)

    def outer(i):
        names.add(threading.current_thread().name)
        parallel.in_parallel(inner, 3, 2)  # on a pool thread: in order there, no deadlock
        done.append(i)

    for _ in range(3):
        parallel.in_parallel(outer, 4, 2)
    assert len(done) == 12 and sorted(seen) == sorted(list(range(3)) * 12)
    assert len(names) <= 2  # the same two threads every call

    finished = []

    def failing(i):
        if i in (1, 3):
            raise ValueError(i)
        finished.append(i)

    with pytest.raises(ValueError, match="1"):
        parallel.in_parallel(failing, 6, 2)
    assert sorted(finished) == [0, 2, 4, 5]  # every other call ran to its end first


def test_workers_follow_the_cgroup_cpu_quota_a_pod_limit_sets(tmp_path, monkeypatch):
    """A pod limited to 2 CPUs on a large node gets 2 workers, not one per CPU of the node (its
    cgroup v2 cpu.max), rounded up; no quota, or no file, leaves the affinity; the variable wins."""
    from advpatch import parallel

    cpu_max = tmp_path / "cpu.max"
    for text, cpus in (("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1), ("max 100000", 0),
                       ("garbage", 0)):
        cpu_max.write_text(text)
        assert parallel.cgroup_cpus(str(cpu_max)) == cpus, text
    assert parallel.cgroup_cpus(str(tmp_path / "missing")) == 0
    monkeypatch.delenv("ADVPATCH_WORKERS", raising=False)
    monkeypatch.setattr(parallel, "cgroup_cpus", lambda: 1)
    assert parallel.workers() == 1
    monkeypatch.setattr(parallel, "cgroup_cpus", lambda: 0)
    assert parallel.workers() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("ADVPATCH_WORKERS", "3")
    assert parallel.workers() == 3
    a = np.zeros((40, 4, 4, 3), np.uint8)
    b = a.copy()
    b[[3, 17, 39], 1, 2, 0] = 1
    assert parallel.changed_images(a, b) == 3 and parallel.changed_images(a, a) == 0

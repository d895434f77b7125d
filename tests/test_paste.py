"""The NumPy paste (advpatch.patches.paste) against TensorFlow's warp and blend, bit for bit; its
independence of threads and batch size; the exact distances from windows; batches sized to a memory
budget (issue 24)."""

import numpy as np
import pytest

from advpatch import evaluation, patches
from advpatch.evaluation import distance_stats
from advpatch.parallel import capped, deploy_bytes
from advpatch.patches import paste
from advpatch.patches.patchset import _patch_measured

CLASSES = [str(i) for i in range(10)]


def _tf_blend(window, warped, divide=False):
    import tensorflow as tf

    x = tf.cast(window, tf.float32)
    base = x / 255 if divide else x * (1 / 255)
    blended = base + warped[..., -1:] * (warped[..., :-1] - base)
    return tf.cast(tf.round(tf.clip_by_value(blended, 0.0, 1.0) * 255), tf.uint8).numpy()


@pytest.mark.parametrize("side, out_hw", [(26, (30, 26)), (12, (28, 28)), (64, (40, 48))])
def test_warp_is_tensorflows_bit_for_bit(side, out_hw):
    """Rotations, down- and up-scaling, windows partly off the canvas: the same float32 bits as
    ImageProjectiveTransformV3, and the same uint8 blend."""
    import tensorflow as tf

    from advpatch.patches.geometry import warp

    rng = np.random.default_rng(side)
    n = 48
    canvases = rng.random((3, side, side, 4), dtype=np.float32)
    canvases[..., -1] = patches.make_mask(side, "circle")
    index = rng.integers(0, 3, n)
    f32 = np.float32
    where = patches.Placements(rng.uniform(-180, 180, n).astype(f32), rng.uniform(0.1, 1.5, n).astype(f32),
                               rng.uniform(-5, out_hw[1] + 5, n).astype(f32),
                               rng.uniform(-5, out_hw[0] + 5, n).astype(f32))
    rows = patches.transforms(where, side, out_hw)
    expected = warp(tf.gather(canvases, index), tf.constant(rows), out_hw).numpy()
    flat, padded_side = paste.padded(canvases)
    got = paste.warp_windows(flat, padded_side, index, rows, *out_hw)
    np.testing.assert_array_equal(got, expected)
    window = rng.integers(0, 256, (n, *out_hw, 3), dtype=np.uint8)
    for divide in (False, True):
        np.testing.assert_array_equal(paste.blend(window, got[..., -1:], got[..., :-1], divide),
                                      _tf_blend(window, expected, divide))


@pytest.mark.parametrize("shape, scale", [((28, 28, 1), 0.0), ((64, 56, 3), 0.4)])
def test_apply_patches_is_the_same_bytes_whatever_the_threads_chunks_and_batches(shape, scale):
    rng = np.random.default_rng(5)
    n = 70
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    side = min(shape[:2])
    ps = patches.PatchSet(rng.random((2, side, side, shape[2]), dtype=np.float32),
                          np.stack([patches.make_mask(side, "circle")] * 2), np.array([1, 2]), CLASSES, shape)
    which = rng.integers(0, 2, n).astype(np.int32)
    where = patches.sample_placements(rng, n, shape[:2], rotation_max=40, scale_min=0.1, scale_max=1.0,
                                      patch_scale=scale)
    one = patches.apply_patches(images, ps, which, where, n_workers=1)
    many = patches.apply_patches(images, ps, which, where, batch_size=7, n_workers=3)
    np.testing.assert_array_equal(one, many)
    in_place = images.copy()
    patches.apply_patches(in_place, ps, which, where, out=in_place)
    np.testing.assert_array_equal(one, in_place)
    chunked = images.copy()
    paste_chunk = paste.CHUNK_PIXELS
    try:
        paste.CHUNK_PIXELS = 1  # one image per chunk
        chunked = patches.apply_patches(images, ps, which, where, n_workers=2)
    finally:
        paste.CHUNK_PIXELS = paste_chunk
    np.testing.assert_array_equal(one, chunked)
    # the distances from the pixels the paste changed are the exact distances over the whole images
    exact = distance_stats(images, one)
    measured_images = images.copy()
    measured = _patch_measured(measured_images, ps, which, where, 7)
    np.testing.assert_array_equal(measured_images, one)
    for k, v in exact.items():
        np.testing.assert_array_equal(measured[k], v, err_msg=k)


def test_batches_are_capped_to_the_budget():
    assert capped(256, 128, deploy_bytes((224, 224, 3))) == 256  # 441 KiB an image: 297 fit
    assert capped(256, 64, deploy_bytes((224, 224, 3))) == 148
    assert capped(256, 1, 10 * 2**20) == 1  # at least one image
    assert capped(32, 10_000, 1.0) == 32


def test_corrupt_deploy_bytes_do_not_depend_on_the_batch_size(tmp_path):
    """What memory_budget_mb may change (augment's layout is per batch: the step does not cap it),
    and what deploy_patch reads at a time without a worst-case search."""
    from advpatch.data.dataset import Dataset
    from advpatch.data.writer import DatasetWriter, write_dataset

    rng = np.random.default_rng(2)
    write_dataset(tmp_path / "in", rng.integers(0, 256, (90, 28, 28, 1), dtype=np.uint8),
                  rng.integers(0, 10, 90).astype(np.int32), CLASSES, shard_bytes=30 * 28 * 28)  # 3 shards
    ps = patches.PatchSet(rng.random((2, 28, 28, 1), dtype=np.float32),
                          np.stack([patches.make_mask(28, "circle")] * 2), np.array([1, 2]), CLASSES, (28, 28, 1))
    outs = []
    # batch sizes, blocks read at a time (deploy_block: the step's read size where no byte depends on
    # it), and shards of the evaluation (start:stop) read with a block: each the whole's bytes
    for batch, block, start, stop in ((7, 0, 0, 90), (64, 0, 0, 90), (7, 40, 0, 90), (64, 1000, 0, 90),
                                      (7, 40, 25, 61), (7, 0, 25, 61), (3, 1, 80, 90)):
        target = tmp_path / f"out-{batch}-{block}-{start}"
        with DatasetWriter(target, (28, 28, 1), CLASSES, columns=patches.PATCH_COLUMNS) as w:
            done = patches.deploy(Dataset(tmp_path / "in"), ps, w, method="corrupt", application_rate=0.6,
                                  patch_scale=0.0, placement=dict(rotation_max=22.5, scale_min=0.1, scale_max=1.0,
                                                                  location="random"),
                                  batch_size=batch, rng=np.random.default_rng(0), start=start, stop=stop, block=block)
        outs.append(((start, stop), Dataset(target).load(), done))
    (_, a, whole), *others = outs
    assert whole.num_patched == round(0.6 * 90)
    for (start, stop), b, done in others:
        for k in a:
            np.testing.assert_array_equal(a[k][start:stop], b[k], err_msg=k)
        patched = whole.chosen[:start].sum(), whole.chosen[:stop].sum()  # the shard's patched images, in order
        assert done.num_patched == patched[1] - patched[0]
        for k in whole.distances:
            np.testing.assert_array_equal(whole.distances[k][slice(*patched)], done.distances[k], err_msg=k)


@pytest.mark.parametrize("shape, side, origin, divide", [
    ((28, 28, 1), 28, False, False), ((28, 28, 1), 6, True, False), ((40, 32, 3), 17, False, True),
    ((64, 56, 3), 56, True, True), ((9, 9, 4), 30, False, False)])
def test_the_compiled_paste_is_numpys_passes_bit_for_bit(shape, side, origin, divide, monkeypatch):
    """paste_masked's compiled loop against its NumPy passes (which the tests above hold to
    TensorFlow): the same images and the same recorded sums (and those are the changed bytes'),
    for each channel count, a patch shrunk and enlarged, windows partly off the image, both ways of
    placing the transform (``origin``) and of scaling the base (``divide``)."""
    from advpatch.patches.patchset import _windows

    rng = np.random.default_rng(side)
    n, (h, w, c) = 90, shape
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    canvases = rng.random((3, side, side, c + 1), dtype=np.float32)
    canvases[..., -1] = patches.make_mask(side, "circle") * rng.uniform(0.3, 1.0, (side, side))
    where = patches.sample_placements(rng, n, (h, w), rotation_max=180, scale_min=0.1, scale_max=1.5)
    flat, padded_side = paste.padded(canvases)
    oy, ox, wh, ww = _windows(where, (h, w), patch_size=side, mask=canvases[0, ..., -1])
    rows = patches.transforms(where, side, (h, w))
    if not origin:  # each window's own transform
        rows = rows.copy()
        rows[:, 2] += rows[:, 0] * ox + rows[:, 1] * oy
        rows[:, 5] += rows[:, 3] * ox + rows[:, 4] * oy
    index = rng.integers(0, 3, n).astype(np.intp)

    def run(numpy_passes):
        monkeypatch.setenv("ADVPATCH_NUMPY_PASTE", "1" if numpy_passes else "0")
        out, seen = images.copy(), {}
        paste.paste_masked(images, out, oy, ox, wh, ww, rows, flat, padded_side, index, None, origin=origin,
                           divide=divide, n_workers=2, chunk=13,
                           record=lambda sl, sums: seen.update({sl.start: sums}))
        return out, [seen[k] for k in sorted(seen)]

    (want, want_seen), (got, got_seen) = run(True), run(False)
    assert (want != images).any()
    np.testing.assert_array_equal(got, want)
    assert len(got_seen) == len(want_seen) == -(-n // 13)
    for g, e in zip(got_seen, want_seen):
        np.testing.assert_array_equal(g, e)
    # and the sums are the changed bytes' (every image's, from the images themselves)
    changed = (want != images).reshape(n, -1)
    a, b = images.reshape(n, -1), want.reshape(n, -1)
    counts = changed.sum(axis=1)
    assert counts.min() >= 0 and counts.sum() > 0
    np.testing.assert_array_equal(np.concatenate(got_seen), evaluation.change_sums(a[changed], b[changed], counts))


# (image byte, mask, patch value) where base = byte / 255 and byte * float32(1 / 255) blend to bytes
# one apart (about 3 pixels in a million do; found by a search over random triples)
APART = [(226, 0.37336546182632446, 0.5554205775260925), (123, 0.24755024909973145, 0.23680955171585083),
         (238, 0.2803264856338501, 0.08698099851608276), (244, 0.2300022840499878, 0.4538837671279907),
         (124, 0.23308449983596802, 0.4273882508277893), (251, 0.7837332487106323, 0.33633410930633545)]


def test_the_compiled_paste_scales_the_base_as_asked(monkeypatch):
    """``divide`` changes a byte in a few per million: these points, read at whole pixels (the
    identity transform: the weights are 1 and 0), tell the two apart in both the compiled loop and
    NumPy's passes."""
    k = len(APART)
    canvas = np.zeros((1, k, k, 2), np.float32)
    canvas[0, 0, :, 0] = [p for _, _, p in APART]
    canvas[0, 0, :, 1] = [m for _, m, _ in APART]
    images = np.zeros((1, k, k, 1), np.uint8)
    images[0, 0, :, 0] = [b for b, _, _ in APART]
    flat, side = paste.padded(canvas)
    rows = np.array([[1, 0, 0, 0, 1, 0, 0, 0]], np.float32)
    got = {}
    for numpy_passes in ("1", "0"):
        monkeypatch.setenv("ADVPATCH_NUMPY_PASTE", numpy_passes)
        for divide in (False, True):
            out = images.copy()
            paste.paste_masked(images, out, np.zeros(1, int), np.zeros(1, int), k, k, rows, flat, side,
                               np.zeros(1, np.intp), None, divide=divide, n_workers=1)
            got[numpy_passes, divide] = out[0, 0, :, 0]
    expected = {d: paste.blend(images[0, 0, :, 0], canvas[0, 0, :, 1], canvas[0, 0, :, 0], d) for d in (False, True)}
    assert (expected[True] != expected[False]).all()
    for (_, divide), row in got.items():
        np.testing.assert_array_equal(row, expected[divide])


def test_a_loop_compiles_where_no_cache_can_be_kept(monkeypatch):
    """Numba refuses ``cache=True`` where it finds no folder to write (a read-only image run as
    another user): the loop is compiled without a cache then, not refused."""
    import numba

    from advpatch.parallel import compiled

    real, asked = numba.jit, []

    def jit(fn, cache=False, **kw):
        asked.append(cache)
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return real(fn, cache=cache, **kw)

    monkeypatch.setattr(numba, "jit", jit)

    def twice(a):
        return a * 2

    assert compiled(twice)(21) == 42 and asked == [True, False]


def test_a_loop_is_made_once_whichever_threads_ask_for_it():
    """Threads asking for a loop at once (a step's loading thread and its first paste) wait for
    one maker and get the same loop."""
    import threading
    import time

    from advpatch.parallel import made_once

    calls = []

    @made_once
    def make():
        calls.append(threading.current_thread().name)
        time.sleep(0.05)  # every thread asks while the first is still making it
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(make())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 4 and all(g is got[0] for g in got)


def test_the_loops_load_on_a_thread_while_the_step_runs_and_its_errors_are_its_own(monkeypatch):
    """``paste.loading()``: warm() runs on a thread during the block, which is joined at its end;
    an error there is left to the step's own first call; the block's own errors come through."""
    import threading

    seen = []
    monkeypatch.setattr(paste, "warm", lambda: seen.append(threading.current_thread().name) or 3)
    with paste.loading():
        pass
    assert seen == ["advpatch-load"]  # on its own thread, finished when the block ends

    def broken():
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(paste, "warm", broken)
    with paste.loading():  # the loading thread's error is not the block's
        pass
    with pytest.raises(ValueError, match="the step's own"), paste.loading():
        raise ValueError("the step's own error")

    monkeypatch.setenv("ADVPATCH_NUMPY_PASTE", "1")  # NumPy's passes asked for: nothing to load
    seen.clear()
    monkeypatch.setattr(paste, "warm", lambda: seen.append(1))
    with paste.loading():
        pass
    assert seen == []


@pytest.mark.parametrize("shape, side, batch", [((30, 26, 1), 26, 16), ((48, 40, 3), 6, 5), ((64, 56, 3), 56, 70)])
def test_apply_patches_is_tensorflows_whole_image_warp_and_blend_bit_for_bit(shape, side, batch):
    """Each window pixel is read at its image coordinates: the bytes of TensorFlow's warp of the
    whole image (ImageProjectiveTransformV3) blended as the steps blend, whatever the windows (a
    batch's largest patch sets them) and the batches."""
    import tensorflow as tf

    from advpatch.patches.geometry import warp

    rng = np.random.default_rng(side)
    n = 70
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    ps = patches.PatchSet(rng.random((2, side, side, shape[2]), dtype=np.float32),
                          np.stack([patches.make_mask(side, "circle")] * 2), np.array([1, 2]), CLASSES, shape)
    which = rng.integers(0, 2, n).astype(np.int32)
    where = patches.sample_placements(rng, n, shape[:2], rotation_max=45, scale_min=0.1, scale_max=1.0)
    got = np.concatenate([patches.apply_patches(images[i:i + batch], ps, which[i:i + batch],
                                                where.take(slice(i, i + batch))) for i in range(0, n, batch)])
    warped = warp(tf.gather(ps.canvases(), which), tf.constant(patches.transforms(where, side, shape[:2])),
                  shape[:2]).numpy()
    np.testing.assert_array_equal(got, _tf_blend(images, warped))

import json

import numpy as np
import pytest

from advpatch.data.dataset import Dataset, DatasetError, to_float, to_uint8
from advpatch.data.writer import DatasetWriter, write_dataset


def _images(n, shape=(8, 8, 1), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8), rng.integers(0, 3, size=n)


def test_round_trip_with_columns_and_provenance(tmp_path):
    x, y = _images(10)
    patched = np.arange(10) % 2 == 0
    spec = write_dataset(tmp_path / "d", x, y, ["a", "b", "c"], provenance=[{"step": "test"}],
                         columns={"patched": patched})
    assert spec.num_examples == 10
    ds = Dataset(tmp_path / "d")
    data = ds.load()
    np.testing.assert_array_equal(data["x"], x)
    np.testing.assert_array_equal(data["y"], y)
    np.testing.assert_array_equal(data["patched"], patched)
    manifest = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert manifest["format"] == "advpatch-dataset" and manifest["version"] == 1
    assert manifest["image_shape"] == [8, 8, 1] and manifest["value_range"] == [0, 255]
    assert manifest["class_names"] == ["a", "b", "c"]
    assert manifest["provenance"] == [{"step": "test"}]
    assert manifest["columns"] == {"patched": "bool"}


def test_shards_bound_memory_and_batches_stream_in_order(tmp_path):
    x, y = _images(25)
    # 64 bytes per image, 200 bytes per shard -> 3 images per shard
    write_dataset(tmp_path / "d", x, y, ["a", "b", "c"], shard_bytes=200)
    ds = Dataset(tmp_path / "d")
    assert len(ds.spec.shards) == 9
    assert [s["num_examples"] for s in ds.spec.shards] == [3] * 8 + [1]
    batches = list(ds.batches(7))
    assert [len(b["y"]) for b in batches] == [7, 7, 7, 4]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), x)


def test_blocks_are_the_shards_rows_as_read_never_across_a_shard(tmp_path):
    """``Dataset.blocks``: rows start:stop in order, at most ``size`` a block, each block inside one
    shard and a writable view of what was read (no copy), the columns cut with the images."""
    x, y = _images(25)
    write_dataset(tmp_path / "d", x, y, ["a", "b", "c"], shard_bytes=500, columns={"k": np.arange(25)})
    ds = Dataset(tmp_path / "d")
    assert [s["num_examples"] for s in ds.spec.shards] == [7, 7, 7, 4]
    blocks = list(ds.blocks(5))
    assert [len(b["y"]) for b in blocks] == [5, 2, 5, 2, 5, 2, 4]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in blocks]), x)
    np.testing.assert_array_equal(np.concatenate([b["k"] for b in blocks]), np.arange(25))
    assert all(b["x"].flags.writeable for b in blocks)
    assert blocks[0]["x"].base is blocks[1]["x"].base is not None  # views of one buffer: the shard as read
    assert blocks[1]["x"].base is not blocks[2]["x"].base
    part = list(ds.blocks(100, 4, 16))  # a shard of the rows: only the shards they are in are read
    assert [len(b["y"]) for b in part] == [3, 7, 2]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in part]), x[4:16])
    assert list(ds.blocks(3, 9, 9)) == []


def test_read_buffers_are_handed_out_again_only_once_nothing_holds_them():
    """``Buffers``: a buffer comes back from :meth:`take` once no array refers to it (a view of a
    view still does), never while one does; a larger request than any free buffer gets a new one."""
    from advpatch.io.npz import Buffers

    def address(a):
        return a.__array_interface__["data"][0]

    pool = Buffers(keep=2)
    first = pool.take(100)
    at = address(first)
    view = first[10:90][::2].reshape(4, 10)  # a view of a view
    del first
    second = pool.take(100)
    assert address(second) != at and not np.shares_memory(second, view)
    del view
    third = pool.take(80)
    assert address(third) == at  # nothing holds the first: its bytes are handed out again
    assert address(pool.take(150)) not in (at, address(second))  # too small: a new one
    holder = {"x": third[:40]}  # a dict of views holds it too
    del third
    assert address(pool.take(100)) not in (at, address(second))  # the second is free but held below
    del holder


def test_a_dataset_read_through_reuses_the_buffers_of_shards_nobody_holds(tmp_path):
    """``blocks`` reads every shard into a buffer of a pool: a caller that keeps each block keeps it
    intact (nothing is read over it), a caller that drops them gets the same few buffers back shard
    after shard; either way the rows are the data's (and ``batches``', which keeps no pool)."""
    x, y = _images(60)
    write_dataset(tmp_path / "d", x, y, ["a", "b", "c"], shard_bytes=5 * 64)
    ds = Dataset(tmp_path / "d")
    assert len(ds.spec.shards) == 12
    kept = list(ds.blocks(5))
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in kept]), x)
    assert len({b["x"].__array_interface__["data"][0] for b in kept}) == 12  # every shard its own buffer
    addresses, at = set(), 0
    for block in ds.blocks(5):  # each dropped before the next is read
        np.testing.assert_array_equal(block["x"], x[at:at + 5])
        block["x"][:] = 0  # a caller patching in place: the next shard's read overwrites it all
        addresses.add(block["x"].__array_interface__["data"][0])
        at += 5
    assert at == 60 and len(addresses) <= 4
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in ds.batches(7)]), x)


def test_corrupt_shard_is_detected(tmp_path):
    x, y = _images(5)
    write_dataset(tmp_path / "d", x, y, ["a", "b", "c"])
    shard = tmp_path / "d" / "shard-00000.npz"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="does not match its sha256"):
        Dataset(tmp_path / "d").load()


def test_failed_write_leaves_nothing_behind(tmp_path):
    x, y = _images(5)
    with pytest.raises(RuntimeError), DatasetWriter(tmp_path / "d", (8, 8, 1), ["a", "b", "c"]) as w:
        w.write(x, y)
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_input(tmp_path):
    x, y = _images(5)
    with pytest.raises(DatasetError, match="uint8"):
        write_dataset(tmp_path / "a", x.astype(np.float32), y, ["a", "b", "c"])
    with pytest.raises(DatasetError, match=r"labels must be in \[0, 1\]"):
        write_dataset(tmp_path / "b", x, y + 5, ["a", "b"])
    with pytest.raises(DatasetError, match="empty dataset"):
        write_dataset(tmp_path / "c", x[:0], y[:0], ["a", "b", "c"])
    assert list(tmp_path.iterdir()) == []


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset\.json is missing"):
        Dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DatasetError, match="not an advpatch-dataset manifest"):
        Dataset(tmp_path)


def test_pickled_shard_is_refused(tmp_path):
    x, y = _images(3)
    write_dataset(tmp_path / "d", x, y, ["a", "b", "c"])
    shard = tmp_path / "d" / "shard-00000.npz"
    np.savez(shard, x=np.array([object()], dtype=object), y=y)
    manifest = json.loads((tmp_path / "d" / "dataset.json").read_text())
    import hashlib

    manifest["shards"][0]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (tmp_path / "d" / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="allow_pickle"):
        Dataset(tmp_path / "d").load()


def test_float_conversion_round_trips():
    x = np.arange(256, dtype=np.uint8)
    f = to_float(x)
    assert f.dtype == np.float32 and f.min() == 0.0 and f.max() == 1.0
    np.testing.assert_array_equal(to_uint8(f), x)


def test_a_shard_written_in_the_background_raises_its_error_and_waits_in_order():
    from advpatch.io.files import Background

    done = []
    bg = Background()
    for i in range(3):
        bg.submit(done.append, i)
    bg.wait()
    assert done == [0, 1, 2]

    def fail():
        raise OSError("disk full")

    bg.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        bg.wait()
    bg.submit(fail)
    bg.wait(raise_error=False)  # abort: the folder goes anyway


def test_shards_are_saved_two_at_a_time_and_errors_come_in_order():
    """``Background(2)`` (the dataset writer's): two tasks run at once (each waits for the other
    here), a third waits for the oldest; the first error in submission order is raised once none
    is running."""
    import threading
    import time

    from advpatch.data.writer import WRITING
    from advpatch.io.files import Background

    assert WRITING == 2
    both = threading.Barrier(2, timeout=10)  # broken (an error) unless two run at once
    done = []
    bg = Background(2)
    bg.submit(lambda: done.append(("a", both.wait())))
    bg.submit(lambda: done.append(("b", both.wait())))
    bg.submit(done.append, "c")
    bg.wait()
    assert sorted(map(str, done))[-1] == "c" and len(done) == 3

    def fail(message, delay):
        time.sleep(delay)
        raise OSError(message)

    bg.submit(fail, "first", 0.2)  # fails last, but was submitted first
    bg.submit(fail, "second", 0.0)
    with pytest.raises(OSError, match="first"):
        bg.wait()
    finished = []
    bg.submit(fail, "early", 0.0)
    bg.submit(lambda: (time.sleep(0.2), finished.append(1)))
    time.sleep(0.05)
    with pytest.raises(OSError, match="early"):
        bg.submit(finished.append, 2)  # the oldest failed: raised once the other is done too
    assert finished == [1]
    bg.wait()


def test_batches_read_the_next_shard_ahead_and_give_the_same_rows(tmp_path):
    """Batches over many shards (the next one read on a thread while the caller works) are the
    rows in order, cut where the whole's batches are, for any start and stop; a corrupt shard
    further on still stops the reading with its error when its rows are reached."""
    x, y = _images(103, seed=3)
    spec = write_dataset(tmp_path / "d", x, y, [str(i) for i in range(10)], shard_bytes=8 * 8 * 7)
    assert len(spec.shards) == 15
    data = Dataset(tmp_path / "d")
    for start, stop, size in ((0, 103, 10), (5, 97, 16), (30, 31, 4), (0, 103, 200)):
        batches = list(data.batches(size, start, stop))
        assert np.array_equal(np.concatenate([b["x"] for b in batches]), x[start:stop])
        assert np.array_equal(np.concatenate([b["y"] for b in batches]), y[start:stop])
        assert all(len(b["y"]) == size for b in batches[1:-1])
    shard = tmp_path / "d" / spec.shards[9]["file"]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    rows = []
    with pytest.raises(DatasetError, match="sha256"):
        for batch in Dataset(tmp_path / "d").batches(7):
            rows.append(len(batch["y"]))
    assert sum(rows) >= 7 * 8  # everything before the corrupt shard came through first


def test_a_shard_is_read_in_one_pass_and_checked_either_way(tmp_path):
    """read_stored (every shard read): the arrays np.load gives, writable, the images a view of the
    file's buffer and the small arrays copies (a step keeping the labels keeps no image); a
    changed byte is caught by the sha256 when the manifest's is checked and by the member's CRC when
    not; a compressed archive (not what the writer makes) goes through np.load and reads the same."""
    import hashlib

    from advpatch.io.npz import read_stored

    x, y = _images(9, shape=(6, 5, 3), seed=4)
    write_dataset(tmp_path / "d", x, y, ["a", "b", "c"], columns={"patched": np.arange(9) % 2 == 0})
    shard = tmp_path / "d" / "shard-00000.npz"
    digest = hashlib.sha256(shard.read_bytes()).hexdigest()
    names = ["x", "y", "col_patched"]
    for sha in (digest, None):
        got = read_stored(shard, names, DatasetError, sha256=sha)
        with np.load(shard) as npz:
            for name in names:
                np.testing.assert_array_equal(got[name], npz[name])
                assert got[name].dtype == npz[name].dtype and got[name].flags.writeable
        assert got["x"].base is not None and got["x"].base.nbytes == shard.stat().st_size  # the file's buffer
        assert got["y"].base is None and got["col_patched"].base is None  # small: their own (they pin nothing)
    raw = bytearray(shard.read_bytes())
    raw[raw.index(x.tobytes()) + 7] ^= 0x01  # a pixel
    shard.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"sha256 in dataset\.json"):
        Dataset(tmp_path / "d").load()
    with pytest.raises(DatasetError, match="CRC"):
        Dataset(tmp_path / "d", verify=False).load()
    np.savez_compressed(shard, x=x, y=y, col_patched=np.arange(9) % 2 == 0)
    got = read_stored(shard, names, DatasetError, sha256=hashlib.sha256(shard.read_bytes()).hexdigest())
    np.testing.assert_array_equal(got["x"], x)


def _zipfile_npz(arrays):
    """What ``save_npz_hashed`` wrote through ``zipfile`` before it wrote archives itself: the oracle."""
    import io
    import zipfile

    class Stream(io.RawIOBase):  # cannot seek: zipfile puts each member's CRC and sizes after its data
        def __init__(self):
            super().__init__()
            self.data = bytearray()

        def writable(self):
            return True

        def write(self, b):
            self.data += bytes(b)
            return len(b)

    stream = Stream()
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return bytes(stream.data)


@pytest.mark.parametrize("limits", [False, True])
def test_an_npz_is_written_with_the_bytes_zipfile_writes(monkeypatch, limits):
    """``save_npz_hashed`` writes the archive itself (its CRC from ISA-L): the bytes ``zipfile`` writes
    for the same stored members, a non-ASCII name, empty, 0-d and Fortran-ordered arrays included,
    and with zip64 fields and end records where sizes, offsets or counts pass zipfile's limits
    (lowered here so that a test can pass them); ``np.load`` and ``zipfile``'s CRC check read it."""
    import hashlib
    import io
    import zipfile

    from advpatch.io import files

    if limits:
        for module in (files, zipfile):
            monkeypatch.setattr(module, "ZIP64_LIMIT" if module is zipfile else "_ZIP64_LIMIT", 300)
            monkeypatch.setattr(module, "ZIP_FILECOUNT_LIMIT" if module is zipfile else "_FILECOUNT_LIMIT", 3)
    rng = np.random.default_rng(3)
    arrays = {"x": rng.integers(0, 256, (5, 9, 9), dtype=np.uint8), "y": np.arange(5, dtype=np.int32),
              "col_é": np.arange(5) % 2 == 0, "empty": np.zeros((0, 4), np.float32), "scalar": np.array(2.5),
              "fortran": np.asfortranarray(rng.random((3, 4)))}
    expected = _zipfile_npz(arrays)
    out = io.BytesIO()
    digest = files.save_npz_hashed(out, **arrays)
    assert out.getvalue() == expected and digest == hashlib.sha256(expected).hexdigest()
    if limits:
        assert b"PK\x06\x06" in expected  # the zip64 end records were written
    with zipfile.ZipFile(io.BytesIO(out.getvalue())) as archive:
        assert archive.testzip() is None  # every member's CRC
    with np.load(io.BytesIO(out.getvalue()), allow_pickle=False) as npz:
        for name, value in arrays.items():
            np.testing.assert_array_equal(npz[name], value)


def test_the_crc_is_zlibs():
    """The zip members' CRC-32 (``advpatch.io.files.crc32``: ISA-L's) is zlib's, value for value,
    continued from any start value and on any length."""
    import zlib

    from advpatch.io.files import crc32

    assert crc32.__module__ != "zlib"  # ISA-L's, as installed
    data = np.random.default_rng(2).integers(0, 256, 3 * 2**20 + 7, dtype=np.uint8)
    for size in (0, 1, 15, 4096, len(data)):
        for start in (0, 1, 0xFFFFFFFF, 123456789):
            assert crc32(data[:size], start) == zlib.crc32(data[:size], start)

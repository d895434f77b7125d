"""advpatch.io.jpeg: Pillow's codec called directly gives the pixels of Pillow's public API."""

import threading

import numpy as np
import pytest

from advpatch.io import jpeg
from advpatch.parallel import in_parallel


def _images():
    rng = np.random.default_rng(3)
    for shape in ((1, 1), (1, 17), (8, 8), (9, 9), (17, 33), (224, 224), (375, 500)):
        for channels in (3, 1):
            full = (*shape, 3) if channels == 3 else shape
            yield rng.integers(0, 256, full, dtype=np.uint8)  # noise
            ramp = (np.add.outer(np.arange(shape[0]), 2 * np.arange(shape[1])) % 256).astype(np.uint8)
            yield np.ascontiguousarray(np.broadcast_to(ramp[..., None], (*shape, 3))) if channels == 3 else ramp
    yield np.full((31, 29, 3), 200, np.uint8)


def test_the_direct_codec_runs_here_and_gives_pillows_pixels():
    assert jpeg.direct()  # this machine has memfd and Pillow 13: the tests below run the direct path
    for image in _images():
        for quality in (1, 10, 50, 75, 95, 100):
            mine = jpeg.round_trip(image, quality)
            np.testing.assert_array_equal(mine, jpeg.pillow_round_trip(image, quality),
                                          err_msg=f"{image.shape} quality {quality}")


def test_on_threads_each_image_is_its_own():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (40, 64, 48, 3), dtype=np.uint8)
    alone = np.stack([jpeg.pillow_round_trip(i, 35) for i in x])
    out = np.empty_like(x)
    in_parallel(lambda i: jpeg.round_trip(x[i], 35, out[i]), len(x), 4)
    np.testing.assert_array_equal(out, alone)
    # into a strided target (a channel of a channels-last batch)
    plane = np.empty((64, 48, 3), np.uint8)
    jpeg.round_trip(np.ascontiguousarray(x[0, ..., 1]), 35, plane[..., 1])
    np.testing.assert_array_equal(plane[..., 1], jpeg.pillow_round_trip(np.ascontiguousarray(x[0, ..., 1]), 35))


def test_a_pillow_whose_codec_differs_takes_the_public_path(monkeypatch):
    """Objects that are not what the module expects (here an encoder that refuses its settings):
    the check fails and every call goes through Pillow's public API, with the same pixels."""
    from PIL import Image

    core = Image.core

    class Refuses:
        def __getattr__(self, name):
            if name == "jpeg_encoder":
                def encoder(*args):
                    raise TypeError("function takes at most 15 arguments")
                return encoder
            return getattr(core, name)

    image = np.random.default_rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    monkeypatch.setattr(jpeg, "_direct", None)
    monkeypatch.setattr(Image, "core", Refuses())
    assert jpeg.direct() is False
    monkeypatch.setattr(Image, "core", core)  # Pillow's public path needs its real objects
    np.testing.assert_array_equal(jpeg.round_trip(image, 40), jpeg.pillow_round_trip(image, 40))


def test_a_check_that_gives_other_pixels_turns_the_direct_path_off(monkeypatch):
    def off_by_one(image, quality, mode, out):
        out[...] = jpeg.pillow_round_trip(image, quality) ^ 1

    monkeypatch.setattr(jpeg, "_direct", None)
    monkeypatch.setattr(jpeg, "_codec", off_by_one)
    assert jpeg.direct() is False


@pytest.mark.parametrize("image", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8),
                                   np.zeros((4,), np.uint8)])
def test_pixels_jpeg_cannot_take_are_refused(image):
    with pytest.raises(ValueError, match="JPEG takes uint8"):
        jpeg.round_trip(image, 50)


def test_each_thread_keeps_one_file_and_closes_it_when_it_ends():
    import os

    fds = []
    together = threading.Barrier(3)

    def one():
        jpeg.round_trip(np.zeros((8, 8, 3), np.uint8), 50)
        jpeg.round_trip(np.zeros((8, 8, 3), np.uint8), 50)
        fds.append(jpeg._local.fd)
        together.wait()  # all three alive: three files

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(fds)) == 3

    def ours(fd):
        try:
            return "advpatch-jpeg" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed
            return False

    assert not any(ours(fd) for fd in fds)


_SAVES = [dict(quality=75), dict(quality=95, subsampling=0), dict(quality=40, subsampling=1),
          dict(quality=90, progressive=True), dict(quality=85, optimize=True),
          dict(quality=80, restart_marker_blocks=2),
          dict(quality=70, icc_profile=b"\0" * 300, exif=b"Exif\0\0" + b"\0" * 40),
          dict(quality=60, comment=b"made by a camera")]


def test_a_jpeg_file_decoded_directly_is_pillows_open(tmp_path):
    """decode_opened and decode_plain (load_dataset's paths for a JPEG it keeps as it is, after
    Image.open's parse and without it) against np.asarray(Image.open) on files as cameras and tools
    write them: grayscale and RGB, chroma subsampling 4:4:4, 4:2:2 and
    4:2:0, progressive, optimized Huffman tables, restart markers, ICC and EXIF segments, comments."""
    from PIL import Image

    count = 0
    for k, image in enumerate(_images()):
        for j, options in enumerate(_SAVES):
            path = tmp_path / f"{k}-{j}.jpg"
            Image.fromarray(image).save(path, format="jpeg", **options)
            with Image.open(path) as img:
                expected = np.asarray(img)
            out = np.full(expected.shape, 7, np.uint8)
            with Image.open(path) as img:
                assert jpeg.decode_opened(img, out), (image.shape, options)
                np.testing.assert_array_equal(out, expected, err_msg=f"{image.shape} {options}")
                np.testing.assert_array_equal(np.asarray(img), expected)  # the image itself still loads after
                assert jpeg.plain_header(path.read_bytes()) == (img.mode, *img.size)
            plain = np.full(expected.shape, 7, np.uint8)  # and without Image.open
            assert jpeg.decode_plain(path, image.ndim == 2, plain), (image.shape, options)
            np.testing.assert_array_equal(plain, expected, err_msg=f"plain {image.shape} {options}")
            count += 1
    assert count == len(list(_images())) * len(_SAVES)


def test_what_a_direct_decode_does_not_handle_is_left_to_pillow(tmp_path):
    """Not the plain case: CMYK, a draft, the wrong target, a truncated file. decode_opened says
    so and touches nothing: Pillow's own load then gives its pixels or its error."""
    from PIL import Image, UnidentifiedImageError

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=90)
    whole = (tmp_path / "rgb.jpg").read_bytes()
    (tmp_path / "short.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    untouched = np.full((40, 48, 3), 9, np.uint8)
    with Image.open(tmp_path / "cmyk.jpg") as img:
        assert not jpeg.decode_opened(img, np.empty((40, 48, 4), np.uint8))
    with Image.open(tmp_path / "rgb.jpg") as img:
        img.draft("RGB", (24, 20))  # a reduced decode: not what this path gives
        assert not jpeg.decode_opened(img, untouched)
    with Image.open(tmp_path / "rgb.jpg") as img:
        assert not jpeg.decode_opened(img, np.empty((40, 48), np.uint8))  # the wrong shape
        assert not jpeg.decode_opened(img, np.empty((48, 40, 3), np.uint8))
    with Image.open(tmp_path / "short.jpg") as img:
        assert not jpeg.decode_opened(img, untouched)
        with pytest.raises(OSError, match="truncated"):
            img.load()
    assert (untouched == 9).all()
    # without Image.open: the same refusals, and whatever the header walk does not expect
    assert not jpeg.decode_plain(tmp_path / "cmyk.jpg", False, untouched)
    assert not jpeg.decode_plain(tmp_path / "short.jpg", False, untouched)  # the decoder does not finish it
    assert not jpeg.decode_plain(tmp_path / "rgb.jpg", True, np.empty((40, 48), np.uint8))  # RGB, grey wanted
    assert not jpeg.decode_plain(tmp_path / "rgb.jpg", False, np.empty((48, 40, 3), np.uint8))
    assert not jpeg.decode_plain(tmp_path / "missing.jpg", False, untouched)
    assert (untouched == 9).all()
    Image.fromarray(rgb).save(tmp_path / "png.jpg", format="png")
    second = Image.fromarray(rgb[::-1].copy())
    Image.fromarray(rgb).save(tmp_path / "mpo.jpg", format="mpo", save_all=True, append_images=[second])
    padded = whole[:2] + b"\xff\xff" + whole[2:]  # a fill byte before the first segment: Pillow skips it
    junk = whole[:20] + b"\x00" + whole[20:]  # a byte between two segments: Pillow skips it too
    for name, data in (("padded", padded), ("junk", junk)):
        (tmp_path / f"{name}.jpg").write_bytes(data)
    for name in ("png", "mpo", "padded", "junk", "cmyk"):
        data = (tmp_path / f"{name}.jpg").read_bytes()
        assert jpeg.plain_header(data) is None, name
        assert not jpeg.decode_plain(tmp_path / f"{name}.jpg", False, untouched), name
    with Image.open(tmp_path / "mpo.jpg") as img:
        assert img.format == "MPO"  # what the header walk leaves to Pillow
    assert jpeg.plain_header(b"\xff\xd8\xff\xe0\x00\x10JFIF") is None  # cut inside a segment
    # segments Pillow's parser refuses (so Image.open fails): the header walk refuses them too
    for segment in (b"\xff\xdb\x00\x05\x00\x01\x02",  # a quantization table cut short
                    b"\xff\xe0\x00\x06JFIF",  # a JFIF segment too short for its version
                    b"\xff\xee\x00\x07Adobe",  # an Adobe one too
                    b"\xff\x02\x00\x04ab"):  # a reserved marker
        data = whole[:20] + segment + whole[20:]  # after the file's own JFIF segment
        (tmp_path / "bad.jpg").write_bytes(data)
        with pytest.raises(UnidentifiedImageError):
            Image.open(tmp_path / "bad.jpg").load()
        assert jpeg.plain_header(data) is None, segment
    assert whole[2:4] == b"\xff\xe0" and whole[4:6] == b"\x00\x10"  # that segment ends at byte 20
    with Image.open(tmp_path / "rgb.jpg") as img:
        assert jpeg.plain_header(whole) == ("RGB", 48, 40) == (img.mode, *img.size)
    assert (untouched == 9).all()


def test_load_dataset_reads_jpegs_directly_and_gets_pillows_pixels(tmp_path, monkeypatch):
    """A class folder of JPEGs (and a PNG among them) read into a dataset with the direct decode
    and with Pillow's own: the same bytes, RGB and grayscale, on threads."""
    from PIL import Image

    from advpatch.data.dataset import Dataset
    from advpatch.data.readers import write_image_folder

    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        (tmp_path / "in" / cls).mkdir(parents=True)
        for i in range(12):
            img = Image.fromarray(rng.integers(0, 256, (30, 26, 3), dtype=np.uint8))
            if i % 4 == 3:
                img = img.convert("L")  # grayscale files among RGB ones: converted to RGB
            kind = "png" if i == 5 else "jpg"
            img.save(tmp_path / "in" / cls / f"{i}.{kind}", **({"quality": 60 + i} if kind == "jpg" else {}))
    calls = []
    real, real_plain = jpeg.decode_opened, jpeg.decode_plain

    def counted(img, out):
        done = real(img, out)
        calls.append(done)
        return done

    def counted_plain(path, gray, out):
        done = real_plain(path, gray, out)
        plain.append(done)
        return done

    plain = []
    for color in ("rgb", "grayscale"):
        got = {}
        for direct in (True, False):
            monkeypatch.setattr(jpeg, "decode_opened", counted if direct else (lambda img, out: False))
            monkeypatch.setattr(jpeg, "decode_plain", counted_plain if direct else (lambda path, gray, out: False))
            target = tmp_path / f"{color}-{direct}"
            write_image_folder(tmp_path / "in", target, 0, color, 0, 0, [], 1 << 20)
            got[direct] = Dataset(target).load()
        for key in got[True]:
            np.testing.assert_array_equal(got[True][key], got[False][key], err_msg=f"{color} {key}")
    # the RGB files read as RGB, the grayscale ones as grayscale, went the direct way without Image.open;
    # the others (a grayscale file read as RGB, an RGB one as grayscale) were opened and converted
    assert sum(plain) == 16 + 6 and len(plain) == 2 * 22  # 22 JPEGs (16 RGB, 6 grey) and 2 PNGs, read twice

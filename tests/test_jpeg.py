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

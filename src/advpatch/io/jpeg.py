"""JPEG compression and decompression of uint8 pixels through Pillow's own codec, with Python's
lock released for all of it.

``Image.fromarray(x).save(buf, format="jpeg", quality=q)`` then ``np.asarray(Image.open(buf))``
spends about as long in Python as in libjpeg (the plugin's settings and marker parsing, the tile
machinery, packing the pixels for NumPy), holding Python's lock, and Pillow encodes into a
``BytesIO`` holding it too: on two threads the second core mostly waits (1.4x one thread's speed at
224x224). :func:`round_trip` calls the same encoder and decoder objects (``PIL.Image.core``) with
the settings ``save(format="jpeg", quality=q)`` gives them (Pillow 13.0's
``JpegImagePlugin._save``: no options, so none of its markers), through a per-thread in-memory file
(``memfd``), each call releasing the lock: the same JPEG bytes and the same pixels, twice the speed
on two threads.

The same bytes are checked, not assumed: the first call in a process compares both paths on small
images (and tests/test_jpeg.py on many sizes and qualities); where that check fails, or Pillow's
codec objects are not what this module expects (another Pillow), or the system has no ``memfd``,
every call takes Pillow's public path (:func:`pillow_round_trip`).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from typing import Any, Optional, Tuple

import numpy as np

MAXBLOCK = 65536
"""Pillow's encoder buffer (``ImageFile.MAXBLOCK``; ``_save`` gives at least this, and 4 bytes a
pixel of a row)."""

_local = threading.local()
_direct: Optional[bool] = None
_check = threading.Lock()


def _mode(image: np.ndarray) -> str:
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"JPEG takes uint8 [H, W] or [H, W, 3] pixels, not {image.dtype} {list(image.shape)}")
    return "L" if image.ndim == 2 else "RGB"


def pillow_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (uint8 [H, W] or [H, W, 3]) saved as JPEG at ``quality`` and read back, through
    Pillow's public API (what ART's ``JpegCompression`` does)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode=_mode(image)).save(buf, format="jpeg", quality=quality)
    return np.asarray(Image.open(buf))


def round_trip(image: np.ndarray, quality: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``image`` (uint8 [H, W] or [H, W, 3]) compressed as JPEG at ``quality`` and decompressed, into
    ``out`` (same shape; default a new array): the bytes of :func:`pillow_round_trip`, with Python's
    lock released while the codec runs (see the module's notes)."""
    mode = _mode(image)
    out = np.empty_like(image) if out is None else out
    if out.shape != image.shape or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {list(image.shape)}, not {out.dtype} {list(out.shape)}")
    if _direct is None:
        _decide()
    if _direct:
        _codec(np.ascontiguousarray(image), quality, mode, out)
    else:
        out[...] = pillow_round_trip(np.ascontiguousarray(image), quality)
    return out


def _file() -> int:
    """This thread's in-memory file descriptor (closed when the thread ends)."""
    fd = getattr(_local, "fd", None)
    if fd is None:
        fd = os.memfd_create("advpatch-jpeg", os.MFD_CLOEXEC)
        _local.fd = fd
        _local.closer = _Closer(fd)
    return int(fd)


class _Closer:
    """Closes a thread's file when the thread's locals go."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _codec(image: np.ndarray, quality: int, mode: str, out: np.ndarray) -> None:
    """Pillow's encoder and decoder, as ``save(format="jpeg", quality=quality)`` and ``open`` use
    them, through this thread's memfd (each of their calls releases Python's lock)."""
    from PIL import Image

    core: Any = Image.core
    h, w = image.shape[:2]
    extents = (0, 0, w, h)
    fd = _file()
    pixels = core.new(mode, (w, h))
    raw = core.raw_decoder(mode, mode, 0, 1)  # Image.frombytes
    try:
        raw.setimage(pixels, extents)
        raw.decode(memoryview(image.data).cast("B"))
    finally:
        raw.cleanup()
    # JpegImagePlugin._save's encoderconfig for quality alone: quality, progressive, smooth,
    # optimize, keep_rgb, streamtype, dpi, subsampling, restart marker blocks and rows, qtables,
    # comment, extra, exif
    encoder = core.jpeg_encoder(mode, mode, quality, False, 0, False, False, 0, [0, 0], -1, 0, 0, None, None,
                                b"", b"")
    try:
        encoder.setimage(pixels, extents)
        os.lseek(fd, 0, os.SEEK_SET)
        status = encoder.encode_to_file(fd, max(MAXBLOCK, 5, w * 4))
    finally:
        encoder.cleanup()
    if status < 0:
        raise OSError(f"JPEG encoder error {status}")
    data = os.pread(fd, os.lseek(fd, 0, os.SEEK_CUR), 0)
    if not _decode(data, mode, w, h, fd, out):
        raise OSError("JPEG decoder stopped before the end of the image")


def _decode(data: bytes, mode: str, w: int, h: int, fd: int, out: np.ndarray) -> bool:
    """JPEG ``data`` decoded as ``Image.open`` and ``np.asarray`` decode it (the decoder its tile
    names: ``(rawmode, "")``, the pixels packed as ``Image.tobytes`` packs them) into ``out``
    through the file ``fd``. False where the decoder did not reach the end of the image."""
    from PIL import Image

    core: Any = Image.core
    extents = (0, 0, w, h)
    decoded = core.new(mode, (w, h))
    decoder = core.jpeg_decoder(mode, mode, "")  # JpegImageFile's tile: (rawmode, "")
    try:
        decoder.setimage(decoded, extents)
        done, status = decoder.decode(data)
    finally:
        decoder.cleanup()
    if done >= 0 or status < 0:  # a complete image ends the decode (-1) with no error
        return False
    packer = core.raw_encoder(mode, mode, 0, 1)  # Image.tobytes
    size = out.size
    try:
        packer.setimage(decoded, extents)
        os.lseek(fd, 0, os.SEEK_SET)
        packer.encode_to_file(fd, size + 16)
    finally:
        packer.cleanup()
    target = out if out.flags.c_contiguous else np.empty_like(out)
    if os.preadv(fd, [memoryview(target.data).cast("B")], 0) != size:
        raise OSError("JPEG: the decoded image is short")
    if target is not out:
        out[...] = target
    return True


def decode_opened(img: Any, out: np.ndarray) -> bool:
    """The pixels of ``img`` (a JPEG file ``Image.open`` has parsed and not loaded) into ``out``
    (uint8, C-contiguous, [H, W] for mode L or [H, W, 3] for RGB): what ``np.asarray(img)`` gives,
    through Pillow's decoder called directly, Python's lock released for the reading, the decoding
    and the packing (``Image.open``'s parse of the markers stays in Python). False, with ``out``
    and ``img`` as they were, wherever the file is not the plain case (another mode, a draft, an
    image in several tiles, a truncated or damaged file, a Pillow whose objects this module does not
    know): the caller then loads ``img`` as usual, and gets its errors."""
    if getattr(img, "format", None) != "JPEG" or img.mode not in ("L", "RGB") or not direct():
        return False
    w, h = img.size
    if out.shape != ((h, w) if img.mode == "L" else (h, w, 3)) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        return False
    tiles = getattr(img, "tile", None) or []
    if len(tiles) != 1 or getattr(img, "decoderconfig", None) or getattr(img, "fp", None) is None:
        return False
    name, extents, offset, args = tiles[0]
    if name != "jpeg" or tuple(extents) != (0, 0, w, h) or tuple(args) != (img.mode, ""):
        return False
    fp = img.fp
    position = fp.tell()
    fp.seek(offset)
    data = fp.read()
    fp.seek(position)
    return _decode(data, img.mode, w, h, _file(), out)  # out is written only once the image is whole


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""The start-of-frame markers (``0xFFC4``, ``0xFFC8`` and ``0xFFCC`` are other things)."""


def plain_header(data: bytes) -> Optional[Tuple[str, int, int]]:
    """``(mode, width, height)`` of the JPEG file ``data`` as ``Image.open`` would read them, for the
    plain case only: a JPEG start, then well-formed segments up to the first scan with exactly one
    frame of 8-bit samples in 1 ("L") or 3 ("RGB") components, no multi-picture (MPO) segment, and
    no more pixels than Pillow opens without a warning; the segments Pillow's parser reads
    (quantization tables, JFIF, Adobe, ICC) as long as it needs them. None for anything else
    (junk or padding between segments, a marker Pillow does not know, CMYK, 12-bit, an MPO...),
    which ``Image.open`` then reads, with its errors. Pillow's decoder reads the markers itself:
    only the mode and the size are taken from here."""
    from PIL import Image

    if not data.startswith(b"\xff\xd8\xff"):
        return None
    at, end, found = 2, len(data), None
    while at + 4 <= end:
        if data[at] != 0xFF:
            return None
        marker, length = data[at + 1], (data[at + 2] << 8) | data[at + 3]
        first, stop = at + 4, at + 2 + length  # the segment's contents
        if marker < 0xC0 or marker in (0xD8, 0xD9, 0xFF) or 0xD0 <= marker <= 0xD7 or length < 2 or stop > end:
            return None  # a marker Pillow refuses or reads without a length, or a segment off the file
        if marker == 0xDA:  # the first scan: the header is whole
            break
        if marker in _SOF:
            if found is not None or length < 8 or data[first] != 8 or data[first + 5] not in (1, 3):
                return None
            h, w = (data[first + 1] << 8) | data[first + 2], (data[first + 3] << 8) | data[first + 4]
            found = ("L" if data[first + 5] == 1 else "RGB", w, h)
        elif marker == 0xDB:  # quantization tables: Pillow refuses one cut short
            while first < stop:
                first += 1 + 64 * (1 if data[first] >> 4 == 0 else 2)
            if first != stop:
                return None
        elif marker in (0xE0, 0xEE) and length < 9 and data.startswith(b"JFIF" if marker == 0xE0 else b"Adobe", first):
            return None  # Pillow reads a version at bytes 5-6
        elif marker == 0xE2 and (data.startswith(b"MPF\x00", first)  # Pillow may open it as an MPO
                                 or (data.startswith(b"ICC_PROFILE\x00", first) and length < 16)):
            return None
        at = stop
    else:
        return None
    limit = Image.MAX_IMAGE_PIXELS
    if found is None or not found[1] or not found[2] or (limit is not None and found[1] * found[2] > limit):
        return None
    return found


def decode_plain(path: Any, gray: bool, out: np.ndarray) -> bool:
    """The JPEG file at ``path`` decoded into ``out`` (uint8, C-contiguous, [H, W] with ``gray``,
    else [H, W, 3]) without ``Image.open``: the file read whole, its mode and size from
    :func:`plain_header`, Pillow's decoder as :func:`decode_opened` calls it (Python's lock held
    only for the header's few segments). False, ``out`` untouched, wherever the file is not a
    plain JPEG of that mode and shape or the decoder does not finish it: the caller then reads it
    through ``Image.open``, and gets Pillow's errors."""
    if not direct():
        return False
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    header = plain_header(data)
    if header is None:
        return False
    mode, w, h = header
    if mode != ("L" if gray else "RGB") or out.shape != ((h, w) if gray else (h, w, 3)) or out.dtype != np.uint8 \
            or not out.flags.c_contiguous:
        return False
    return _decode(data, mode, w, h, _file(), out)


def _decide() -> None:
    """Whether :func:`_codec` runs: it exists here and gives Pillow's public path's pixels on a few
    small images (gradients and noise, RGB and grayscale, odd sizes, low and high quality)."""
    global _direct
    with _check:
        if _direct is not None:
            return
        ok = hasattr(os, "memfd_create") and hasattr(os, "preadv")
        if ok:
            rng = np.random.default_rng(0)
            samples = [rng.integers(0, 256, (13, 21, 3), dtype=np.uint8),
                       np.add.outer(np.arange(40), np.arange(33)).astype(np.uint8) * 3,
                       rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)]
            try:
                for image in samples:
                    for quality in (1, 50, 95):
                        mine = np.empty_like(image)
                        _codec(image, quality, _mode(image), mine)
                        ok = ok and np.array_equal(mine, pillow_round_trip(image, quality))
            except Exception:  # another Pillow's objects: its public path runs
                ok = False
        _direct = ok


def direct() -> bool:
    """Whether :func:`round_trip` runs Pillow's codec directly (see the module's notes)."""
    if _direct is None:
        _decide()
    return bool(_direct)

"""Reading a dataset shard (an ``.npz`` archive of stored, uncompressed members) in one pass.

:func:`advpatch.io.files.read_arrays` (``np.load``) reads a file through ``zipfile``: the bytes are
read, checked against each member's CRC-32 and copied into new arrays, and a caller that checks the
file's sha256 first has read it once more. :func:`read_stored` reads the file once into one
writable buffer, checks its sha256 as it reads (when given one: the CRC is then redundant) or else each
member's CRC, and returns arrays that are views of that buffer (NumPy's own ``.npy`` header
parsing; no pickle: an object dtype is refused), into a buffer of a :class:`Buffers` pool when
given one: a reader going through a dataset's shards reuses the buffer of a shard nobody holds any
more (the kernel zeroing fresh pages took 16% of deploy_patch's CPU time at 224x224). An archive it
does not expect (a compressed or encrypted member, a header it cannot parse) goes through
:func:`~advpatch.io.files.read_arrays`, whose errors name the file and what is wrong (``make fuzz``
checks them).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Type

import numpy as np

from advpatch.errors import AdvpatchError
from advpatch.io.files import LOCAL_HEADER, LOCAL_MAGIC, PathLike, crc32, read_arrays

BLOCK = 4 << 20
"""Bytes read (and hashed right after, while most of them are in the cache) at a time. Each block
takes Python's lock twice (after the read, after the hash), and a step's threads working in Python
beside the reader make it wait up to the switch interval (5 ms) each time: 1 MiB blocks made a
shard read beside Numba's first load take 0.5 s instead of 0.13 s; 4 MiB blocks, a quarter of
those waits (deploy_patch on 4,000 224x224 images: 2.16 -> 1.97 s, medians of 5 alternated runs)."""


class _Unexpected(Exception):
    """Not an archive this reader takes: the general reader reads it (and names what is wrong, as
    it does for every other exception of this one's)."""


class _View(io.RawIOBase):
    """A read-only, seekable file over a memoryview (zipfile and NumPy's header parser read it):
    no copy of the buffer."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view, self._at = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), len(self._view) - self._at))
        b[:n] = self._view[self._at:self._at + n]
        self._at += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at


class Buffers:
    """Read buffers handed out again once nothing holds them: :meth:`take` gives a buffer of the
    pool that no array refers to any more (every view of a buffer, and every view of those, holds a
    reference to it: CPython's reference count says when the last is gone), else a new one, which
    the pool keeps (at most ``keep``: a buffer beyond them is the caller's alone, freed as usual).
    What a free buffer's count is, is read off a probe nothing else refers to, counted the same way
    (no interpreter's own references assumed)."""

    def __init__(self, keep: int = 4) -> None:
        self._keep = keep
        self._buffers: List[np.ndarray] = [np.empty(0, np.uint8)]  # [0]: the probe
        self._lock = threading.Lock()

    def take(self, size: int) -> np.ndarray:
        """``size`` writable bytes (uint8 [size]): a free buffer's first ``size``, else a new one."""
        with self._lock:
            free = -1
            for buffer in self._buffers:
                count = sys.getrefcount(buffer)
                if free < 0:  # the probe: the count of a buffer only the pool refers to
                    free = count
                elif buffer.size >= size and count <= free:
                    return buffer[:size]
            buffer = np.empty(size, np.uint8)  # NumPy's allocation: huge pages where the kernel gives them
            if len(self._buffers) <= self._keep:
                self._buffers.append(buffer)
            return buffer


def read_stored(path: PathLike, names: Sequence[str], error: Type[AdvpatchError], *, sha256: Optional[str] = None,
                mismatch: str = "", buffers: Optional[Buffers] = None) -> Dict[str, Any]:
    """The arrays ``names`` of the ``.npz`` file ``path``, from one read of it. ``sha256``: the
    file's bytes must hash to it, else ``error(mismatch)``. A large array (the images) is a view of
    the one writable buffer the file is read into (``buffers``' when given), a block at a time,
    each block hashed as it arrives; a small one (under an eighth of the file) is its own copy."""
    size = os.path.getsize(path)
    buffer = buffers.take(size) if buffers is not None else np.empty(size, np.uint8)
    view = buffer.data
    digest = hashlib.sha256() if sha256 is not None else None
    with open(path, "rb", buffering=0) as f:
        at = 0
        while at < size:
            n = f.readinto(view[at:at + BLOCK])
            if not n:
                raise error(f"{path} changed while it was read: {at} of {size} bytes")
            if digest is not None:
                digest.update(view[at:at + n])
            at += n
    if digest is not None and digest.hexdigest() != sha256:
        raise error(mismatch or f"{path} does not match its sha256")
    try:
        return _members(buffer, view, names, check_crc=sha256 is None)
    except Exception:  # anything this fast path did not expect: the general reader decides
        return read_arrays(path, names, error)  # ... and names what is wrong, when something is


def _members(buffer: np.ndarray, view: memoryview, names: Sequence[str], check_crc: bool) -> Dict[str, Any]:
    with zipfile.ZipFile(_View(view)) as archive:
        infos = {info.filename: info for info in archive.infolist()}
    out = {}
    for name in names:
        info = infos[f"{name}.npy"]
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1 or info.compress_size != info.file_size:
            raise _Unexpected(name)
        fields = LOCAL_HEADER.unpack_from(view, info.header_offset)
        if fields[0] != LOCAL_MAGIC:
            raise _Unexpected(name)
        start = info.header_offset + LOCAL_HEADER.size + fields[10] + fields[11]  # name and extra field lengths
        end = start + info.file_size
        if end > len(view):
            raise _Unexpected(name)
        if check_crc and crc32(view[start:end]) != info.CRC:
            raise _Unexpected(name)  # the general reader names the bad CRC
        f = _View(view[start:end])
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise _Unexpected(name)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:
            raise _Unexpected(name)  # never unpickled: the general reader refuses it
        count = int(np.prod(shape, dtype=np.int64))
        if f.tell() + count * dtype.itemsize != info.file_size:
            raise _Unexpected(name)
        array = np.frombuffer(buffer, dtype, count, start + f.tell())
        array = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
        # a small array (the labels, a column) is copied out: a view would keep the whole file's
        # buffer alive for as long as it lives (a step keeping every batch's labels, all the images)
        out[name] = array.copy() if array.nbytes * 8 < len(buffer) else array
    return out

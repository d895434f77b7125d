"""Atomic writes: a file or folder appears whole, or not at all.

Everything a step writes is built under a temporary name beside its destination and renamed into
place when complete, so a failed or killed step leaves no half-written artifact behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tarfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Type, TypeVar, Union

from advpatch.errors import AdvpatchError, ArchiveError

PathLike = Union[str, "os.PathLike[str]"]


def _temporary_name(path: Path) -> Path:
    return path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"


class AtomicDir:
    """A folder built at :attr:`tmp` and moved to :attr:`path` by :meth:`commit`.

    KFP creates an output artifact's folder before the step runs: an *empty* folder at ``path`` is
    replaced; anything else there is an error, never overwritten.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.tmp = _temporary_name(self.path)
        self.tmp.mkdir(parents=True)
        self.done = False

    def commit(self) -> Path:
        if self.path.exists():
            if self.path.is_dir() and not any(self.path.iterdir()):
                self.path.rmdir()
            else:
                self.abort()
                raise FileExistsError(f"{self.path} already exists and is not empty")
        os.replace(self.tmp, self.path)
        self.done = True
        return self.path

    def abort(self) -> None:
        self.done = True
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``path``, on an exception it is removed."""
    folder = AtomicDir(path)
    try:
        yield folder.tmp
    except BaseException:
        folder.abort()
        raise
    folder.commit()


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yield a temporary file name; on success it is renamed to ``path``, on an exception removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Background:
    """Up to ``depth`` tasks at a time, each on a thread of the object's own (files written while
    the caller computes the next): :meth:`submit` waits for the oldest while ``depth`` are under way,
    :meth:`wait` for all of them, then raises the first error in the order they were submitted
    (none of them still running)."""

    def __init__(self, depth: int = 1) -> None:
        self._depth = max(1, depth)
        self._pool: Any = None
        self._tasks: List[Any] = []

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        while len(self._tasks) >= self._depth:
            task = self._tasks.pop(0)
            try:
                task.result()
            except BaseException:
                self.wait(raise_error=False)  # none still running once the error is raised
                raise
        from concurrent.futures import ThreadPoolExecutor

        self._pool = self._pool or ThreadPoolExecutor(self._depth)
        self._tasks.append(self._pool.submit(fn, *args))

    def wait(self, raise_error: bool = True) -> None:
        tasks, self._tasks = self._tasks, []
        error: Optional[BaseException] = None
        for task in tasks:
            try:
                task.result()
            except BaseException as e:
                error = error or e
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if error is not None and raise_error:
            raise error


def save_npz(path: Union[PathLike, Any], **arrays: Any) -> None:
    """NumPy arrays as an ``.npz`` archive (readable by ``np.load(allow_pickle=False)``): see
    :func:`save_npz_hashed`."""
    save_npz_hashed(path, **arrays)


BLOCK = 1 << 20
"""Bytes written at a time: each block's CRC, sha256 and write while it is in the cache."""

try:  # the zip members' CRC-32: ISA-L's, zlib's function and values 7x as fast here (2 -> 15 GB/s),
    # Python's lock released (a test compares the two)
    from isal.isal_zlib import crc32 as crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib's gives the same values
    from zlib import crc32 as crc32

# zipfile's records (its struct formats), for archives of stored members written in one pass
LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a member's local header (30 bytes; the reader finds its data by it)
LOCAL_MAGIC = b"PK\x03\x04"
_ZIP64_LOCAL = struct.Struct("<HHQQ")  # the local header's zip64 field: sizes given after the data
_DESCRIPTOR = struct.Struct("<4sLQQ")  # a member's CRC and sizes after its data (zip64)
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END64 = struct.Struct("<4sQ2H2L4Q")
_END64_LOCATOR = struct.Struct("<4sLQL")
_END = struct.Struct("<4s4H2LH")
_ZIP64_LIMIT = (1 << 31) - 1  # zipfile's: beyond it a size or offset goes in a zip64 field
_FILECOUNT_LIMIT = (1 << 16) - 1
_ZIP64_VERSION = 45
_UNIX, _DESCRIPTOR_FLAG, _UTF8_FLAG = 3, 0x08, 0x800
_DOS_1980 = (0, 1 << 5 | 1)  # time, date: 1980-01-01 00:00:00


class _Member:
    """One member's data on its way into the archive: counted and CRC'd a block at a time (what
    ``np.lib.format.write_array`` and :func:`_write_pieces` write to)."""

    def __init__(self, out: "_HashingWriter") -> None:
        self._out, self.crc, self.size = out, 0, 0

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.crc = crc32(data, self.crc)
        self._out.write(data)
        self.size += size
        return size


class _HashingWriter:
    """A write-only file: every byte goes to ``f`` and into ``digest``, in order, so the digest is
    the file's sha256 without reading it back."""

    def __init__(self, f: Any, digest: Any) -> None:
        self._f, self._digest, self._at = f, digest, 0

    def write(self, data: Any) -> int:
        self._digest.update(data)
        self._f.write(data)
        size = memoryview(data).nbytes
        self._at += size
        return size

    def tell(self) -> int:
        return self._at


def save_npz_hashed(path: Union[PathLike, Any], **arrays: Any) -> str:
    """NumPy arrays as an ``.npz`` archive at ``path`` (or into a writable file object), readable by
    ``np.load(allow_pickle=False)``, byte for byte the same for the same arrays (``np.savez`` stamps
    each member with the current time), and the file's sha256. A value may be a list of arrays:
    their concatenation is written (the same bytes), never made. The data goes a block at a time
    through the CRC, the hash and the write.

    The archive's bytes are those ``zipfile`` writes for stored members dated 1980-01-01 to a
    stream that cannot seek (``ZipFile.open(member, "w", force_zip64=True)``: each member's CRC and
    sizes in a descriptor after its data, nothing written twice; a test compares the two), written
    here so that the CRC is ISA-L's (``zipfile`` computes zlib's, 2 GB/s here: 7% of deploy_patch's
    CPU time at 224x224)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    with contextlib.ExitStack() as stack:
        raw = path if hasattr(path, "write") else stack.enter_context(open(path, "wb"))  # a file object: written to
        out = _HashingWriter(raw, digest)
        members = []
        for name, value in arrays.items():
            filename, flags = f"{name}.npy", _DESCRIPTOR_FLAG
            try:
                encoded = filename.encode("ascii")
            except UnicodeEncodeError:
                encoded, flags = filename.encode("utf-8"), flags | _UTF8_FLAG
            offset = out.tell()
            out.write(LOCAL_HEADER.pack(LOCAL_MAGIC, _ZIP64_VERSION, 0, flags, 0, *_DOS_1980, 0, 0xFFFFFFFF,
                                        0xFFFFFFFF, len(encoded), _ZIP64_LOCAL.size))
            out.write(encoded)
            out.write(_ZIP64_LOCAL.pack(1, _ZIP64_LOCAL.size - 4, 0, 0))
            member = _Member(out)
            if isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
                _write_pieces(member, value)
            else:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            out.write(_DESCRIPTOR.pack(b"PK\x07\x08", member.crc, member.size, member.size))
            members.append((encoded, flags, member.crc, member.size, offset))
        _write_directory(out, members)
    return digest.hexdigest()


def _write_directory(out: _HashingWriter, members: List[Any]) -> None:
    """The central directory and its end records, as ``zipfile`` closes an archive it wrote."""
    start = out.tell()
    for encoded, flags, crc, size, offset in members:
        extra = [size, size] if size > _ZIP64_LIMIT else []
        if offset > _ZIP64_LIMIT:
            extra.append(offset)
        field = struct.pack("<HH" + "Q" * len(extra), 1, 8 * len(extra), *extra) if extra else b""
        shown = 0xFFFFFFFF if size > _ZIP64_LIMIT else size
        out.write(_CENTRAL.pack(b"PK\x01\x02", _ZIP64_VERSION, _UNIX, _ZIP64_VERSION, 0, flags, 0, *_DOS_1980, crc,
                                shown, shown, len(encoded), len(field), 0, 0, 0, 0o600 << 16,
                                0xFFFFFFFF if offset > _ZIP64_LIMIT else offset))
        out.write(encoded)
        out.write(field)
    end = out.tell()
    count, size = len(members), end - start
    if count > _FILECOUNT_LIMIT or start > _ZIP64_LIMIT or size > _ZIP64_LIMIT:
        out.write(_END64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, start))
        out.write(_END64_LOCATOR.pack(b"PK\x06\x07", 0, end, 1))
        count, size, start = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
    out.write(_END.pack(b"PK\x05\x06", 0, 0, count, count, size, start, 0))


def _write_pieces(f: Any, pieces: List[Any]) -> None:
    """``np.lib.format.write_array(f, np.concatenate(pieces))``'s bytes, piece by piece: its header
    (as ``header_data_from_array_1_0`` of the whole makes it), then the C-order data, a block at a time."""
    import numpy as np

    first = pieces[0]
    if first.dtype.hasobject or any(p.dtype != first.dtype or p.shape[1:] != first.shape[1:] for p in pieces):
        np.lib.format.write_array(f, np.concatenate(pieces), allow_pickle=False)
        return
    shape = (sum(len(p) for p in pieces), *first.shape[1:])
    header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False, "shape": shape}
    try:  # write_array's header is version 1.0 whenever that holds it (a test checks the bytes)
        np.lib.format.write_array_header_1_0(f, header)
    except ValueError:  # a header 1.0 cannot hold: nothing written yet
        np.lib.format.write_array(f, np.concatenate(pieces), allow_pickle=False)
        return
    for piece in pieces:
        if piece.size:
            data = np.ascontiguousarray(piece).data.cast("B")
            for at in range(0, len(data), BLOCK):
                f.write(data[at:at + BLOCK])


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)



def extract_tar(archive: PathLike, dest: PathLike, folder: str = "", *, where: str = "") -> Path:
    """Extract the folder ``folder`` (or the archive's only top-level folder) into ``dest``.

    Every member is checked before anything is written: only regular files and folders, all under
    that one folder, no absolute path, no ``..``, no link or device. Returns the extracted folder.
    """
    where = where or str(archive)
    try:
        tar = tarfile.open(archive)  # noqa: SIM115 (a `with` below: only opening it is a bad archive)
    except (tarfile.TarError, OSError) as e:
        raise ArchiveError(f"cannot read {where} as a tar archive: {e}") from None
    with tar:
        members = tar.getmembers()
        tops = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
        if not folder:
            if len(tops) != 1:
                raise ArchiveError(f"{where} must hold exactly one folder, it holds {sorted(tops)[:5]}")
            folder = next(iter(tops))
        for m in members:
            parts = PurePosixPath(m.name).parts
            if (not (m.isfile() or m.isdir()) or PurePosixPath(m.name).is_absolute() or ".." in parts
                    or not parts or parts[0] != folder):
                raise ArchiveError(f"{where} holds an unsafe or foreign entry {m.name!r}")
        if folder not in tops:
            raise ArchiveError(f"{where} has no folder {folder!r}")
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: a second line of defence
            tar.extractall(dest, members=members, filter="data")
        else:
            tar.extractall(dest, members=members)
    return dest / folder


def create_tar(src: PathLike, archive: PathLike, folder: str) -> Path:
    """A tar file holding ``src``'s contents under ``folder/``."""
    with tarfile.open(archive, "w") as tar:
        tar.add(str(src), arcname=folder)
    return Path(archive)


T = TypeVar("T")


def read_manifest(path: PathLike, error: Type[AdvpatchError], what: str,
                  parse: Callable[[Dict[str, Any]], T]) -> T:
    """A JSON manifest someone handed over, built with ``parse``: every way the file can be wrong
    (unreadable, not UTF-8, not JSON, not an object, a field missing or of the wrong type) is an
    ``error`` naming the file, never another exception (``make fuzz`` checks it)."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise error(f"{path} is not a readable {what}: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{path} is not a {what}: a JSON object was expected, got {type(data).__name__}")
    try:
        return parse(data)
    except AdvpatchError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, RecursionError) as e:
        raise error(f"{path} is not a valid {what}: {type(e).__name__}: {e}") from None


def read_arrays(path: PathLike, names: Sequence[str], error: Type[AdvpatchError]) -> Dict[str, Any]:
    """The arrays ``names`` of an ``.npz`` file someone handed over, never unpickling: every way
    the file can be wrong is an ``error`` naming it (``make fuzz`` checks it)."""
    import struct
    import tokenize
    import zipfile
    import zlib

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: np.asarray(npz[name]) for name in names}
    except (OSError, ValueError, KeyError, EOFError, TypeError, AttributeError, zipfile.BadZipFile, zlib.error,
            struct.error, NotImplementedError, RuntimeError, MemoryError, OverflowError,
            SyntaxError, tokenize.TokenError) as e:  # the last two: NumPy parsing a mangled .npy header
        raise error(f"cannot read {path} as arrays {', '.join(names)}: {type(e).__name__}: {e}") from None

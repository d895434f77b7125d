"""The readers under the fuzzer (tests/fuzz/fuzz_readers.py, `make fuzz`): a short run of every
target, and each kind of input the fuzzer found crashing a reader, kept as a regression test.
Whatever the bytes, a reader returns or raises one clear AdvpatchError naming the file."""

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))
import fuzz_readers

from advpatch.errors import AdvpatchError


def _png_header(width: int, height: int, truncated: bool = False) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    if truncated:
        return b"\x89PNG\r\n\x1a\n" + chunk[:12]
    data = zlib.compress(b"\x00" * 64)  # a few rows: the header promises far more
    idat = struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    return b"\x89PNG\r\n\x1a\n" + chunk + idat


FOUND = [  # (target, input, what the error says): each crashed a reader before it was fixed
    ("dataset_manifest", b'{"format": "\xfa"}', r"not a readable dataset manifest"),
    ("dataset_manifest", None, r"shard-00000\.npz is missing"),  # a manifest naming a shard that is not there
    ("dataset_shard", b"", r"cannot read .*shard-00000\.npz"),
    ("model_manifest", b"", r"model\.json is not a readable model manifest"),
    ("model_manifest", b"[1, 2]", r"a JSON object was expected, got list"),
    ("patchset_manifest", b'{"format": "\x90"}', r"not a readable patch-set manifest"),
    ("patchset_arrays", b"", r"cannot read .*patches\.npz"),
    # make fuzz, 200 s in: a member's .npy header cut mid-dict (NumPy's header parser raised TokenError)
    ("patchset_arrays", (Path(__file__).parent / "fuzz" / "found" / "patchset_arrays-npy-header-tokenerror.npz"
                         ).read_bytes(), r"cannot read .*patches\.npz.*TokenError"),
    # make fuzz, about 3 minutes into its 10-minute run: the targets array a 0-d scalar (len() of unsized object)
    ("patchset_arrays", (Path(__file__).parent / "fuzz" / "found" / "patchset_arrays-scalar-targets.npz"
                         ).read_bytes(), r"patches\.npz does not hold patches for .*targets .* \[\]"),
    ("image_folder", _png_header(8, 8, truncated=True), r"cannot read image .*fuzzed\.png"),
    ("image_folder", _png_header(40000, 40000), r"cannot read image .*fuzzed\.png.*(decompression bomb|exceeds)"),
]


@pytest.mark.parametrize("target,data,message", FOUND)
def test_what_the_fuzzer_found_is_a_clear_error(target, data, message, tmp_path):
    fuzz_readers._seed_files(tmp_path)
    if data is None:  # the good manifest, its shard renamed
        manifest = json.loads((tmp_path / "dataset" / "dataset.json").read_text())
        manifest["shards"][0]["file"] = "shard-00000.npz"
        data = json.dumps(manifest).encode()
        for shard in (tmp_path / "dataset").glob("*.npz"):
            shard.unlink()
    body = fuzz_readers.make_target(target, tmp_path)
    with pytest.raises(AdvpatchError, match=message):
        body.__wrapped__(data)


@pytest.mark.parametrize("target", fuzz_readers.TARGETS)
def test_a_short_fuzzing_run_finds_nothing(target, tmp_path):
    """3,000 inputs per target, from its good file (`make fuzz` runs each for 10 minutes)."""
    run = subprocess.run([sys.executable, str(Path(fuzz_readers.__file__)), target, "-runs=3000", "-seed=1",
                          f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus")], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not list(tmp_path.glob("crash-*"))

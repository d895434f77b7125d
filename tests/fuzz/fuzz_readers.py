"""Coverage-guided fuzzing (atheris) of everything that reads a file a user or another step hands
over: the dataset reader (its manifest and its shards), the model manifest, the patch-set reader
(manifest and arrays) and the image-folder loader (one image among good ones).

    make fuzz                      each target for FUZZ_SECONDS (600) in turn (outputs/fuzz/)
    python tests/fuzz/fuzz_readers.py TARGET [-max_total_time=S] [-runs=N] [CORPUS_DIR]

The contract under test: whatever the bytes, a reader returns or raises an
:class:`~advpatch.errors.AdvpatchError` (one clear line for the user); any other exception is a
crash, and atheris stops with the input that caused it (saved as ``crash-*``). Every crash found
becomes a regression test in ``tests/test_fuzz.py``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

TARGETS = ("dataset_manifest", "dataset_shard", "model_manifest", "patchset_manifest", "patchset_arrays",
           "image_folder")


def _seed_files(root: Path) -> None:
    """A good dataset, model manifest, patch set and image folder: what each target mutates."""
    from PIL import Image

    from advpatch.data.writer import write_dataset
    from advpatch.models import ModelInfo
    from advpatch.patches.patchset import PatchSet

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    write_dataset(root / "dataset", x, np.array([0, 1, 0, 1, 0, 1]), ["a", "b"],
                  columns={"patched": np.zeros(6, bool)})
    (root / "model").mkdir()
    (root / "model" / "model.json").write_text(json.dumps(ModelInfo("le_net", (8, 8, 1), ["a", "b"]).to_json()))
    PatchSet(rng.random((1, 4, 4, 1)).astype(np.float32), np.ones((1, 4, 4), np.float32), np.array([1]),
             ["a", "b"], (8, 8, 1), {}, []).save(root / "patches")
    for name in ("a", "b"):
        (root / "images" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(x[i, ..., 0]).save(root / "images" / name / f"{i}.png")


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def make_target(name: str, root: Path):
    """The one-input function of target ``name`` over the seed files under ``root``."""
    from advpatch.errors import AdvpatchError

    def dataset_manifest(data: bytes):
        from advpatch.data.dataset import Dataset
        _write(root / "dataset" / "dataset.json", data)
        Dataset(root / "dataset").load()

    def dataset_shard(data: bytes):
        from advpatch.data.dataset import Dataset
        shard = Dataset(root / "dataset").spec.shards[0]["file"]
        _write(root / "dataset" / shard, data)
        Dataset(root / "dataset", verify=False).load()  # a shard whose sha256 was forged along with it

    def model_manifest(data: bytes):
        from advpatch.models import check_fits, read_model_info
        _write(root / "model" / "model.json", data)
        check_fits(read_model_info(root / "model"), (8, 8, 1), 2)

    def patchset_manifest(data: bytes):
        from advpatch.patches.patchset import PatchSet
        _write(root / "patches" / "patchset.json", data)
        PatchSet.load(root / "patches")

    def patchset_arrays(data: bytes):
        from advpatch.patches.patchset import PatchSet
        _write(root / "patches" / "patches.npz", data)
        PatchSet.load(root / "patches")

    def image_folder(data: bytes):
        from advpatch.data.sources import import_dataset
        _write(root / "images" / "b" / "fuzzed.png", data)
        out = root / "out"
        import shutil
        shutil.rmtree(out, ignore_errors=True)
        import_dataset(str(root / "images"), out, split="all", image_size=8, color_mode="grayscale")

    body = locals()[name]
    originals = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def one_input(data: bytes) -> None:
        try:
            body(data)
        except AdvpatchError:
            pass  # a clear error: what the contract allows
        finally:
            for p, content in originals.items():  # the next input starts from the good files
                if p.read_bytes() != content if p.exists() else True:
                    p.write_bytes(content)
            extra = root / "images" / "b" / "fuzzed.png"
            if extra.exists():
                extra.unlink()

    one_input.__wrapped__ = body  # the target without the contract's catch: for regression tests
    return one_input


def seed_inputs(name: str, root: Path) -> list:
    """A corpus to start from: the good file the target replaces."""
    files = {"dataset_manifest": "dataset/dataset.json", "model_manifest": "model/model.json",
             "patchset_manifest": "patches/patchset.json", "patchset_arrays": "patches/patches.npz",
             "image_folder": "images/a/0.png"}
    if name == "dataset_shard":
        from advpatch.data.dataset import Dataset
        return [(root / "dataset" / Dataset(root / "dataset").spec.shards[0]["file"]).read_bytes()]
    return [(root / files[name]).read_bytes()]


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if argv[1:] == ["--list"]:
        print(" ".join(TARGETS))
        return 0
    if len(argv) < 2 or argv[1] not in TARGETS:
        print(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [CORPUS_DIR]", file=sys.stderr)
        return 2
    import atheris

    name = argv.pop(1)
    with atheris.instrument_imports(include=["advpatch"]):
        import advpatch.data.dataset, advpatch.models, advpatch.patches.patchset, advpatch.data.readers, advpatch.data.sources  # noqa
    root = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    _seed_files(root)
    corpus = [a for a in argv[1:] if not a.startswith("-")]
    for folder in corpus:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(seed_inputs(name, root)):
            (Path(folder) / f"seed-{i}").write_bytes(data)
    atheris.Setup(argv, make_target(name, root))
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())

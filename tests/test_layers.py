"""The shape: a core library that does not know KFP, short step modules, one definition of each thing."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "advpatch"
CORE = sorted(p for p in SRC.rglob("*.py") if "app" not in p.relative_to(SRC).parts)
"""Everything under advpatch except the application layer (advpatch.app), which drives KFP."""
ENGINE = SRC / "patches"


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


LAYERS = [
    ("advpatch", "advpatch.errors", "advpatch.settings", "advpatch.results"),
    ("advpatch.params",),
    ("advpatch.io",),
    ("advpatch.tracking",),
    ("advpatch.data",),
    ("advpatch.evaluation",),
    ("advpatch.models",),
    ("advpatch.patches",),
    ("advpatch.defences",),
    ("advpatch.report",),
    ("advpatch.steps",),
    ("advpatch.components",),
    ("advpatch.pipelines",),
    ("advpatch.app",),
]
"""The layers, from the bottom: a module imports only from its own part or from layers below it.
The core (everything up to ``steps``) knows nothing of KFP; the components are KFP shells over the
steps; the pipelines compose components; the application (CLI, local runner, compiler) drives them."""
ROOTS = {SRC: "advpatch", SRC.parent.parent / "components": "advpatch.components",
         SRC.parent.parent / "pipelines": "advpatch.pipelines"}


def _part(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[0] == "advpatch" else module


def _rank(module: str) -> int:
    part = _part(module)
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def _modules():
    for root, package in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            yield ".".join([package, *path.relative_to(root).with_suffix("").parts]).removesuffix(".__init__"), path


def _advpatch_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("advpatch"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("advpatch"):
            if node.module == "advpatch":  # from advpatch import steps: the names may be packages
                yield from (f"advpatch.{a.name}" if f"advpatch.{a.name}" in KNOWN else "advpatch" for a in node.names)
            else:
                yield node.module


KNOWN = {".".join(m.split(".")[:2]) for m, _ in _modules()}


def test_every_part_of_the_package_has_its_layer():
    assert sorted(KNOWN - {p for layer in LAYERS for p in layer}) == []
    root_modules = sorted(p.stem for p in SRC.glob("*.py"))
    assert len(root_modules) <= 6, root_modules  # the rest lives in sub-packages named after what they hold


@pytest.mark.parametrize("module, path", list(_modules()), ids=lambda x: x if isinstance(x, str) else "")
def test_each_module_imports_only_its_own_part_and_the_layers_below(module, path):
    up = sorted({m for m in _advpatch_imports(path) if _part(m) != _part(module) and _rank(m) > _rank(module)})
    assert not up, f"{module} (layer {_part(module)}) imports from a layer above it: {up}"
    if _rank(module) <= _rank("advpatch.steps"):  # the core: no KFP
        kfp = [m for m in _imports(path) if m.split(".")[0] == "kfp"]
        assert not kfp, f"{module} imports {kfp}"


def test_importing_every_core_module_loads_no_kfp():
    modules = [".".join(("advpatch", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
               for p in CORE]
    code = (f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kfp'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_module_sizes():
    steps = {p.name: len(p.read_text().splitlines()) for p in (SRC / "steps").glob("*.py")
             if p.name != "_params.py"}  # generated: a record per step, not a step
    assert max(steps.values()) <= 150, steps
    core = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in CORE if ENGINE not in p.parents}
    assert max(core.values()) <= 400, {k: v for k, v in core.items() if v > 400}


def test_no_pickle_and_every_keras_load_is_safe():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "allow_pickle=True" not in text and "import pickle" not in text, path
        assert "safe_mode=False" not in text, path
        for call in ("keras.saving.load_model(", "mlflow.keras.load_model(", "tf.keras.models.load_model("):
            for line in (line for line in text.splitlines() if call in line):
                assert "safe_mode=True" in line, f"{path}: {line.strip()}"

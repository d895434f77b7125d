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


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(SRC)))
def test_core_modules_import_neither_kfp_nor_the_layers_above(path):
    bad = [m for m in _imports(path) if m.split(".")[0] == "kfp"
           or m.startswith(("advpatch.app", "advpatch.components", "advpatch.pipelines"))]
    assert not bad, f"{path.relative_to(SRC)} imports {bad}"


def test_importing_every_core_module_loads_no_kfp():
    modules = [".".join(("advpatch", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
               for p in CORE]
    code = f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'kfp'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_module_sizes():
    steps = {p.name: len(p.read_text().splitlines()) for p in (SRC / "steps").glob("*.py")}
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

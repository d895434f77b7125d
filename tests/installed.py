"""What a user of the built package runs, checked in an environment where advpatch is installed
from its wheel (not from this checkout): shared by the wheel test and the Dockerfile install test."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def plain_env(**extra: str) -> dict:
    """The environment with nothing that points at this checkout or at a test's store."""
    drop = ("PYTHONPATH", "ADVPATCH_OUTPUT_DIR", "MLFLOW_TRACKING_URI", "ADVPATCH_WARM_SOCKET", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def run(bin_dir: Path, *args: str, cwd: Path, timeout: int = 600, **env: str) -> str:
    proc = subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=plain_env(**env), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def component_names() -> list:
    return sorted(p.parent.name for p in (ROOT / "components").glob("*/metadata.yaml"))


def pipeline_names() -> list:
    return sorted(p.stem.replace("_", "-") for p in (ROOT / "pipelines").glob("*.py")
                  if p.stem not in ("__init__", "common"))


def check_installed(bin_dir: Path, cwd: Path) -> None:
    """From outside the source tree, with the installed package: it is the one imported, every
    component module and every pipeline imports, `advpatch list` names every pipeline and
    `advpatch compile` writes every pipeline's YAML."""
    where = run(bin_dir, "python", "-c", "import advpatch, advpatch.components as c, advpatch.pipelines as p;"
                "print(advpatch.__file__, c.__path__[0], p.__file__)", cwd=cwd)
    assert all("site-packages" in w and str(ROOT) not in w for w in where.split()), where
    # each component's own module, then the pipelines and the report (the order once broke them)
    script = ("import importlib, sys\n"
              f"names = {component_names()!r}\n"
              "for n in names:\n"
              "    module = importlib.import_module(f'advpatch.components.{n}.component')\n"
              "    assert callable(getattr(module, n)), n\n"
              "import advpatch.components as c, advpatch.pipelines, advpatch.report, advpatch.report.html\n"
              "assert sorted(c.__all__) == names, (c.__all__, names)\n"
              "assert all(type(getattr(c, n)).__name__ == 'PythonComponent' for n in names)\n"
              "print(len(names))\n")
    assert run(bin_dir, "python", "-c", script, cwd=cwd).split() == [str(len(component_names()))]
    listed = run(bin_dir, "advpatch", "list", cwd=cwd)
    assert all(f"\n{name}:" in f"\n{listed}" for name in pipeline_names()), listed
    run(bin_dir, "advpatch", "compile", "--output", str(cwd / "compiled"), cwd=cwd)
    written = sorted(p.stem for p in (cwd / "compiled").glob("*.yaml"))
    assert written == pipeline_names(), written
    for path in (cwd / "compiled").glob("*.yaml"):
        spec = next(yaml.safe_load_all(path.read_text()))
        assert spec["pipelineInfo"]["name"] and spec["deploymentSpec"]["executors"], path

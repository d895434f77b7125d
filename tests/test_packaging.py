"""The package users install is the built wheel, not this checkout: it must hold every module, and
what a user runs must work from it, installed non-editable into a fresh environment."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from installed import ROOT, check_installed, plain_env, run

from advpatch import __version__


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(ROOT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the build prints no warning of its own (setuptools' deprecation and "package would be ignored")
    assert "Warning" not in proc.stderr, proc.stderr
    (path,) = out.glob("*.whl")
    assert path.name == f"advpatch-{__version__}-py3-none-any.whl"
    return path


def test_the_wheel_holds_every_module_and_component_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "src" / "advpatch"
    sources = {f"advpatch/{p.relative_to(package)}" for p in package.rglob("*.py")}
    for folder in ("components", "pipelines"):
        sources |= {f"advpatch/{p.relative_to(ROOT)}" for p in (ROOT / folder).rglob("*")
                    if p.is_file() and p.suffix in (".py", ".yaml", ".md")}
    assert len(sources) > 120
    assert sorted(sources - names) == []
    # and no module the tree no longer has (setuptools reuses build/lib: a moved module rode along)
    assert sorted(n for n in names if n.endswith(".py") and n not in sources) == []
    # and nothing else at the top: no test, no generic top-level name in site-packages
    assert {n.split("/")[0] for n in names} == {"advpatch", f"advpatch-{__version__}.dist-info"}


@pytest.mark.pipeline
def test_the_installed_wheel_lists_compiles_imports_and_runs_the_short_pipeline(wheel, tmp_path, mnist_folder):
    """Installed non-editable into a fresh venv (its dependencies taken from this one), used from a
    folder outside the source tree: every command a user starts with, and a whole pipeline through
    kfp.local, whose tasks run the installed package too."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", purelib],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies: this environment's packages after the venv's own (a .pth in a path added by
    # a .pth is not read, so this environment's editable advpatch does not come along)
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--ignore-installed", "--no-compile", str(wheel)], check=True, env=plain_env())
    work = tmp_path / "elsewhere"
    work.mkdir()
    check_installed(venv / "bin", work)
    printed = run(venv / "bin", "advpatch", "run", "mnist-patch", "-p", f"data_dir={mnist_folder}", "-p", "epochs=2",
                  "-p", "max_iter=20", "-p", "num_patch=1", cwd=work, timeout=900)
    assert "finished with status SUCCESS" in printed or (work / "outputs" / "run" / "results.json").is_file(), printed
    assert (work / "outputs" / "run" / "results.json").is_file()
    log = (work / "outputs" / "run" / "pipeline.log").read_text()
    assert str(ROOT / "src") not in log and "ModuleNotFoundError" not in log

"""Runtime images: no Docker engine here, so the Dockerfiles are linted, checked for what they
promise, and their install step is run in a fresh virtual environment."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from advpatch import __version__
from installed import check_installed, plain_env

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = [ROOT / "images" / "Dockerfile.cpu", ROOT / "images" / "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_version_and_runs_as_non_root(dockerfile):
    text = dockerfile.read_text()
    assert f"ARG ADVPATCH_VERSION={__version__}\n" in text
    base = re.search(r"^ARG (?:PYTHON|TF)_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.search(r":\d+\.\d+", base) and "latest" not in base  # a pinned base image
    assert re.search(r"^USER 1000:1000$", text, re.M)
    assert "constraints.txt" in text  # exact pins
    assert "ADVPATCH_VERSION}-py3-none-any.whl" in text


def _install_step(dockerfile: Path) -> str:
    """The Dockerfile's RUN line that installs the wheel, continuation lines joined."""
    text = dockerfile.read_text().replace("\\\n", " ")
    return next(line for line in text.splitlines() if line.startswith("RUN ") and "pip install" in line)[4:]


@pytest.mark.slow
def test_cpu_image_install_step_works_in_a_fresh_venv(tmp_path):
    """The Dockerfile's whole install step (install, import checks, compile every pipeline), paths
    mapped to a temporary folder, then what a user runs first, from outside the source tree."""
    # the Dockerfile copies the wheel and constraints.txt to /tmp/: here, to tmp_path
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path),
                    str(ROOT)], check=True)
    (tmp_path / "constraints.txt").write_text((ROOT / "constraints.txt").read_text())
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    step = _install_step(DOCKERFILES[0]).replace("${ADVPATCH_VERSION}", __version__).replace("/tmp/", f"{tmp_path}/")
    assert step.startswith("pip install --no-cache-dir ")
    # reuse this machine's pip cache; --no-compile: byte-compiling 2.3 GB of packages is what an image
    # build pays once, not this test
    step = step.replace("pip install --no-cache-dir ", "pip install --quiet --no-compile ", 1)
    work = tmp_path / "elsewhere"
    work.mkdir()
    path = f"{tmp_path / 'venv' / 'bin'}:/usr/bin:/bin"
    proc = subprocess.run(["sh", "-ec", step], cwd=work, env=plain_env(PATH=path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert not (tmp_path / f"advpatch-{__version__}-py3-none-any.whl").exists()  # the step's own clean-up ran
    check_installed(tmp_path / "venv" / "bin", work)
    out = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-c",
                          "import advpatch, tensorflow, kfp.dsl.executor_main; print(advpatch.__version__, tensorflow.__version__)"],
                         check=True, capture_output=True, text=True, env=plain_env()).stdout
    assert out.split() == [__version__, "2.21.0"]


def test_both_images_check_the_same_things_after_installing():
    """The GPU image (not buildable here) ends its install step with the CPU image's checks."""
    parts = [[part.strip() for part in _install_step(d).split("&&")] for d in DOCKERFILES]
    tails = [p[next(i for i, part in enumerate(p) if part.startswith("python -c")):] for p in parts]
    assert tails[0] == tails[1] and any("advpatch compile" in part for part in tails[0])


def test_gpu_image_drops_the_cpu_tensorflow_pin(tmp_path):
    """The GPU image keeps its base image's CUDA TensorFlow: its constraints filter must remove the
    tensorflow-cpu pin (constraints.txt spells it tensorflow_cpu) and nothing else."""
    text = DOCKERFILES[1].read_text().replace("\\\n", " ")
    command = next(line for line in text.splitlines() if "constraints-gpu.txt" in line and "grep" in line)
    grep = command[4:].split("&&")[0].replace("/tmp/", f"{tmp_path}/")
    (tmp_path / "constraints.txt").write_text((ROOT / "constraints.txt").read_text())
    subprocess.run(grep, shell=True, check=True)  # noqa: S602 - the Dockerfile's own command
    kept = (tmp_path / "constraints-gpu.txt").read_text().splitlines()
    original = (ROOT / "constraints.txt").read_text().splitlines()
    assert not [line for line in kept if re.match(r"tensorflow[-_]cpu==", line, re.I)]
    assert len(kept) == len(original) - 1

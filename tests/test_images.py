"""Runtime images: no Docker engine here, so the Dockerfiles are linted, checked for what they
promise, and their install step is run in a fresh virtual environment."""

import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from installed import check_installed, plain_env

from advpatch import __version__

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
    """The Dockerfile's whole install step, paths mapped to a temporary folder: its `pip install`
    resolved in a fresh venv exactly as written (``--dry-run``: what an image build can get wrong is
    the resolution against constraints.txt; unpacking 2.3 GB of packages it needs no test for), then
    the wheel installed into a fresh venv whose dependencies are this environment's, where the
    step's own checks run (import every pipeline, compile them all), then what a user runs first,
    from outside the source tree."""
    import json

    # the Dockerfile copies the wheel and constraints.txt to /tmp/: here, to tmp_path
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path),
                    str(ROOT)], check=True)
    (tmp_path / "constraints.txt").write_text((ROOT / "constraints.txt").read_text())
    parts = [part.strip() for part in _install_step(DOCKERFILES[0]).replace("${ADVPATCH_VERSION}", __version__)
             .replace("/tmp/", f"{tmp_path}/").split("&&")]
    install, cleanup, checks = parts[0], parts[1], " && ".join(parts[2:])
    assert install.startswith("pip install --no-cache-dir ") and cleanup.startswith("rm ")
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "fresh")], check=True)
    report = tmp_path / "resolved.json"
    resolve = install.replace("pip install --no-cache-dir ", f"pip install --quiet --dry-run --report {report} ", 1)
    fresh = f"{tmp_path / 'fresh' / 'bin'}:/usr/bin:/bin"
    proc = subprocess.run(["sh", "-ec", resolve], cwd=tmp_path, env=plain_env(PATH=fresh), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    resolved = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    pins = dict(line.lower().replace("_", "-").split("==")
                for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert resolved["advpatch"] == __version__ and resolved["tensorflow-cpu"] == "2.21.0" and len(resolved) > 100
    assert {k: v for k, v in resolved.items() if k in pins and pins[k] != v} == {}  # every pin held
    # installed: the wheel into a venv of its own, the dependencies from this environment
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = subprocess.run([str(venv / "bin" / "python"), "-c", purelib],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    wheel = tmp_path / f"advpatch-{__version__}-py3-none-any.whl"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--ignore-installed", "--no-compile", str(wheel)], check=True, env=plain_env())
    work = tmp_path / "elsewhere"
    work.mkdir()
    path = f"{venv / 'bin'}:/usr/bin:/bin"
    for command in (cleanup, checks):  # the rest of the step, as written
        proc = subprocess.run(["sh", "-ec", command], cwd=work, env=plain_env(PATH=path), capture_output=True,
                              text=True)
        assert proc.returncode == 0, command + "\n" + proc.stdout[-3000:] + proc.stderr[-5000:]
    assert not wheel.exists() and not (tmp_path / "compiled").exists()  # the step's own clean-up ran
    # the warm step, as the image's user runs it: every compiled loop into the cache the image names
    warm = next(line for line in DOCKERFILES[0].read_text().splitlines()
                if line.startswith("RUN ") and "advpatch.patches.paste" in line)
    cache = tmp_path / "numba-cache"
    proc = subprocess.run(["sh", "-ec", warm[4:]], cwd=work, env=plain_env(PATH=path, NUMBA_CACHE_DIR=str(cache)),
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "compiled 3 loops" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert len(list(cache.rglob("*.nbc"))) >= 3
    check_installed(venv / "bin", work)


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
    subprocess.run(grep, shell=True, check=True)
    kept = (tmp_path / "constraints-gpu.txt").read_text().splitlines()
    original = (ROOT / "constraints.txt").read_text().splitlines()
    assert not [line for line in kept if re.match(r"tensorflow[-_]cpu==", line, re.I)]
    assert len(kept) == len(original) - 1

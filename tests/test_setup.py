"""The README's two commands do all the set-up: `make test` installs the Debian packages its tests
need (chromium, fonts, PostgreSQL) when they are missing and it can (as root, as CI and a fresh
machine run it), and otherwise says in one line what to install. The step runs here against a
machine state without them: fake dpkg-query, apt-get and id first on PATH."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAKES = {
    "dpkg-query": "#!/bin/sh\n# nothing is installed\nexit 1\n",
    "apt-get": '#!/bin/sh\necho "$*" >> "$FAKE_LOG"\n',
    "id": '#!/bin/sh\necho "$FAKE_UID"\n',
}


def _packages() -> list:
    text = (ROOT / "Makefile").read_text()
    return re.search(r"^SYSTEM_PACKAGES := (.+)$", text, re.M).group(1).split()


def _setup_step(tmp_path: Path, uid: str) -> subprocess.CompletedProcess:
    """`make system-deps` (what `make test` runs first) on a machine without the packages."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "apt.log"),
           "FAKE_UID": uid}
    env.pop("MAKEFLAGS", None)
    return subprocess.run(["make", "-s", "-C", str(ROOT), "system-deps"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_make_test_runs_the_set_up_step_first_and_ci_runs_make_test():
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "test", "STAMP=/dev/null"], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "MAKEFLAGS"})
    lines = dry.stdout.splitlines()
    setup = next(i for i, line in enumerate(lines) if "system-deps.sh" in line)
    assert setup < next(i for i, line in enumerate(lines) if "pytest" in line)
    assert {"chromium", "postgresql"} <= set(_packages())
    assert re.search(r"^(time )?make test\b", (ROOT / ".ci" / "run").read_text(), re.M)


def test_as_root_the_set_up_step_installs_what_is_missing(tmp_path):
    done = _setup_step(tmp_path, "0")
    assert done.returncode == 0, done.stdout + done.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0].startswith("update")
    install = calls[1].split()
    assert install[:1] == ["install"] and install[-len(_packages()):] == _packages()


def test_without_root_the_set_up_step_says_in_one_line_what_to_install(tmp_path):
    done = _setup_step(tmp_path, "1000")
    assert done.returncode != 0 and not (tmp_path / "apt.log").exists()
    lines = [line for line in done.stderr.splitlines()
             if line.strip() and not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert len(lines) == 1, done.stderr
    assert f"sudo apt-get install -y {' '.join(_packages())}" in lines[0] and "as root" in lines[0]


def test_nothing_to_do_when_the_packages_are_there():
    done = subprocess.run(["sh", str(ROOT / "tests" / "system-deps.sh"), "coreutils"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == done.stderr == ""

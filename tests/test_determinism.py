"""Same seed, same bytes, for the whole demo: `make demo` run twice (its own file, so that it runs
beside test_demo.py's runs, not after them)."""

import json
import re

import pytest

from advpatch import settings


@pytest.mark.slow
def test_make_demo_twice_gives_the_same_results_and_the_same_artifact_bytes(tmp_path):
    """`make demo` (the embedded digits) run twice, each in a folder of its own as a new user's
    checkout: ``results.json`` the same but for what names the run and its times, and every artifact
    of every task the same bytes (models included: the save time is kept out of them; the report
    page but for its header line)."""
    import os
    import subprocess
    import sys

    from test_pipeline import _artifacts, _masked

    env = {k: v for k, v in os.environ.items() if k not in (settings.ENV_OUTPUT_DIR, settings.ENV_TRACKING_URI)}
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        subprocess.run([sys.executable, "-m", "advpatch.app.cli", "demo"], cwd=tmp_path / run, env=env, check=True,
                       capture_output=True, timeout=900)
    results = [json.loads((tmp_path / run / "outputs" / "demo" / "results.json").read_text())
               for run in ("first", "second")]
    assert results[0]["created"] != results[1]["created"]  # two runs indeed
    assert _masked(results[0]) == _masked(results[1])
    first, second = (_artifacts(tmp_path / run) for run in ("first", "second"))
    assert list(first) == list(second) and len(first) > 60
    header = re.compile(r"<div class=meta>[^<]*</div>")
    differ = []
    for name, a in first.items():
        b = second[name]
        if a.name in ("summary", "results", "executor_output.json"):  # they name the MLflow runs
            same = _masked(json.loads(a.read_text())) == _masked(json.loads(b.read_text()))
        elif a.name == "html":
            same = header.sub("", a.read_text()) == header.sub("", b.read_text())
        else:
            same = a.read_bytes() == b.read_bytes()
        if not same:
            differ.append(name)
    assert differ == []
    assert sum(name.endswith("model.keras") for name in first) == 3  # the baseline, patched and PGD models

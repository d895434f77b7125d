"""The local runner's warm process: a step forked from it gives what the step gives in a fresh
process; a task that finds no warm process runs its step itself."""

import json
import os
import subprocess
import sys

import pytest

from advpatch.app import warm
from advpatch.components import _warm as client
from advpatch.tracking import RunContext


def test_without_a_warm_process_the_task_runs_its_step_itself(tmp_path, monkeypatch):
    monkeypatch.setenv(client.ENV_WARM_SOCKET, str(tmp_path / "nobody.sock"))
    assert client.run_in_warm_child("load_dataset", {}, RunContext()) is None
    monkeypatch.delenv(client.ENV_WARM_SOCKET)
    assert client.run_in_warm_child("load_dataset", {}, RunContext()) is None


@pytest.mark.server  # the warm process: a server of steps
def test_a_warm_child_runs_the_step_with_the_tasks_environment_and_output(tmp_path, monkeypatch):
    """The same step, the same bytes; its log in the task's stdout/stderr; its error back to the task."""
    from advpatch import steps

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ADVPATCH_OUTPUT_DIR", str(tmp_path / "outputs"))
    cold = steps.load_dataset(dataset=str(tmp_path / "cold"), source="digits", split="test", max_examples=30)
    with warm.warm_starter(tmp_path / "warm.log") as env:
        assert warm.wait_ready(env, timeout=120), (tmp_path / "warm.log").read_text()
        code = (
            "import json, sys\n"
            "from advpatch.components import _warm as warm\n"
            "from advpatch.errors import ParameterError\n"
            "from advpatch.tracking import RunContext\n"
            f"r = warm.run_in_warm_child('load_dataset', {{'dataset': {str(tmp_path / 'warm')!r}, 'source': 'digits',"
            " 'split': 'test', 'max_examples': 30}, RunContext(task_name='t'))\n"
            "print('RESULT', json.dumps(r.metrics, sort_keys=True))\n"
            "try:\n"
            "    warm.run_in_warm_child('load_dataset', {'dataset': 'x', 'source': 'digits', 'split': 'nope'},"
            " RunContext())\n"
            "except ParameterError as e:  # bad input: the step's own clear error, of its own class\n"
            "    print('ERROR', e)\n")
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                             text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("RESULT", "ERROR")))
    assert json.loads(lines["RESULT"]) == {k: v for k, v in cold.metrics.items()}
    assert lines["ERROR"].startswith("split must be one of")
    assert "load_dataset: start" in out.stderr  # the step's own log, in the task's output
    assert "Traceback" in out.stderr and "split must be one of" in out.stderr
    for name in ("dataset.json",):
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "cold" / name).read_bytes()
    shards = sorted(p.name for p in (tmp_path / "cold").iterdir())
    assert shards == sorted(p.name for p in (tmp_path / "warm").iterdir())
    for name in shards:
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "cold" / name).read_bytes(), name
    assert not os.path.exists(env[client.ENV_WARM_SOCKET])  # gone with the run


def test_a_step_error_comes_back_to_the_task_with_its_class():
    """Bad input and a failed service keep their class across the socket (exit 2 against exit 3 at
    the command line); anything else is a WarmError naming the original type."""
    from advpatch.errors import ParameterError, TrackingError

    for error in (ParameterError("split must be one of ..."), TrackingError("MLflow at http://x failed")):
        with pytest.raises(type(error), match=str(error)[:10]):
            client.raise_reply("load_dataset", client.error_reply(error))
    with pytest.raises(client.WarmError, match="KeyError: 'x'"):
        client.raise_reply("load_dataset", client.error_reply(KeyError("x")))
    # a reply naming a class outside advpatch, or not an error of advpatch's, is not trusted
    with pytest.raises(client.WarmError):
        client.raise_reply("x", {"ok": False, "error": "boom", "type": "os:system"})
    with pytest.raises(client.WarmError):
        client.raise_reply("x", {"ok": False, "error": "boom", "type": "advpatch.settings:output_dir"})

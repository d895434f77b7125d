"""Local runs started at once from one folder (two terminals, a sweep by hand, a CI matrix): each
finishes with its own output folder and results and its own complete parent run in the shared
MLflow store, whose one server stops when the last run ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from advpatch import settings

TINY = ["-p", "epochs=1", "-p", "max_iter=10", "-p", "num_patch=1"]


def _env():
    return {k: v for k, v in os.environ.items() if k not in (settings.ENV_OUTPUT_DIR, settings.ENV_TRACKING_URI)}


def _advpatch(*args):
    return [sys.executable, "-m", "advpatch.app.cli", *args]


@pytest.mark.pipeline
def test_three_runs_started_at_once_from_one_folder_all_finish_with_their_own_results(tmp_path, mnist_folder):
    import mlflow

    procs = [subprocess.Popen(_advpatch("run", "mnist-patch", "-p", f"data_dir={mnist_folder}", "-p", f"seed={i}",
                                        *TINY),
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(3)]
    printed = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n\n".join(out[-3000:] for out in printed)
    outputs = tmp_path / "outputs"
    assert sorted(p.name for p in outputs.iterdir()) == ["mlflow", "run", "run-2", "run-3"]
    results = {name: json.loads((outputs / name / "results.json").read_text()) for name in ("run", "run-2", "run-3")}
    # each folder holds the run that printed it, and its own seed's results
    for out in printed:
        (folder,) = [name for name in results if f"results: {outputs / name / 'results.json'}\n" in out]
        assert f"{outputs / folder / 'pipeline.log'}" in out
    seeds = sorted(next(s["params"]["seed"] for s in r["steps"] if s["step"] == "train") for r in results.values())
    assert seeds == [0, 1, 2]
    for name in results:  # the tasks' artifacts beside their results: one KFP run folder each
        (run_folder,) = (outputs / name / "kfp").iterdir()
        assert (run_folder / "report" / "results").is_file()
    # one store, three complete parent runs, each with all of its steps, each FINISHED
    client = mlflow.MlflowClient(f"sqlite:///{outputs / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist")
    parents = client.search_runs([experiment.experiment_id], "tags.`advpatch.kind` = 'pipeline'")
    assert len(parents) == 3 and {p.info.status for p in parents} == {"FINISHED"}
    steps = [client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{p.info.run_id}'")
             for p in parents]
    assert [len(s) for s in steps] == [len(steps[0])] * 3 and len(steps[0]) >= 6
    assert all(run.info.status == "FINISHED" for s in steps for run in s)
    # the shared server was stopped by the last run out, and nobody is registered any more
    assert not (outputs / "mlflow" / "server.json").exists()
    assert list((outputs / "mlflow" / "server-users").iterdir()) == []


def test_an_output_folder_in_use_is_refused_when_named_and_skipped_when_default(tmp_path, monkeypatch):
    from advpatch.app.local import claim_output
    from advpatch.errors import AdvpatchError

    held, lock = claim_output(None, tmp_path / "run")
    with lock:
        assert held == tmp_path / "run"
        nxt, second = claim_output(None, tmp_path / "run")
        with second:
            assert nxt == tmp_path / "run-2"
        with pytest.raises(AdvpatchError, match="in use by another advpatch run"):
            claim_output(tmp_path / "run", tmp_path / "run")
    again, third = claim_output(None, tmp_path / "run")  # free again once the run has ended
    third.close()
    assert again == tmp_path / "run"


@pytest.mark.pipeline
def test_a_tracking_server_that_cannot_start_fails_the_run_in_seconds_with_a_clear_line(tmp_path):
    store = tmp_path / "outputs" / "mlflow"
    store.mkdir(parents=True)
    (store / "mlflow.db").write_text("not a database")  # mlflow server exits at once on it
    (store / "server.json").write_text(json.dumps({"uri": "http://127.0.0.1:9", "pid": "999999999", "log": ""}))
    started = time.monotonic()
    proc = subprocess.run(_advpatch("run", "mnist-patch", *TINY), cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    seconds = time.monotonic() - started
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and seconds < 60, (seconds, proc.stderr[-3000:])
    assert "MLflow server advpatch started for this store" in last and "exited before answering" in last, last
    assert "file is not a database" in last  # the server's own reason, from its log
    assert not (store / "server.json").exists()  # the stale record (a process long gone) was replaced, then cleared

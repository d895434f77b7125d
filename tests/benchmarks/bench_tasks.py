"""What a local pipeline task costs before it does any work, as a ratio to a bare Python start.

    make bench        (or: python tests/benchmarks/bench_tasks.py [--runs N] [--demo])

kfp.local runs every task in a new Python process, so the demo pipeline pays each task's start
17 times. Each figure below is the median wall time of ``--runs`` fresh processes doing what a
task does first (the reference, a bare ``python -c pass``, measured in the same run, alternating):

* kfp executor: KFP's runtime import of a lightweight component (``_KFP_RUNTIME=true``, as the
  local runner and a cluster pod set it);
* + numpy steps: what a data or defence step imports (advpatch's steps, numpy, PIL), no TensorFlow;
* + TensorFlow: what a train / gen_patch / infer step imports (keras without its optional extras);
* + MLflow: the tracking client every step logs through;
* a whole task: ``close_run``, a real step (validate, open the store, find and close the pipeline's
  MLflow run) against a local store, started cold (imports and all), and warm: handed to
  ``advpatch run``'s warm process (:mod:`advpatch.app.warm`), which forks a child that has the
  imports done.

With ``--demo`` it also times ``advpatch demo`` end to end (one run; the issue's target is < 120 s
on 2 cores). Results go to outputs/bench/tasks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {**os.environ, "_KFP_RUNTIME": "true", "TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_DISABLE_TELEMETRY": "true"}
KERAS = "from advpatch import settings; settings.skip_keras_extras(); "
CASES = {
    "kfp executor": "import kfp.dsl.executor_main",
    "+ numpy steps": "import kfp.dsl.executor_main, advpatch.steps, advpatch.defences.preprocessing, advpatch.patches, "
                     "PIL.Image",
    "+ TensorFlow": f"import kfp.dsl.executor_main, advpatch.steps; {KERAS}import tensorflow, keras",
    "+ MLflow": f"import kfp.dsl.executor_main, advpatch.steps; {KERAS}import tensorflow, keras, mlflow",
}


def timed(args, env=None) -> float:
    started = time.perf_counter()
    subprocess.run(args, check=True, env=env or ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def whole_task(store: Path, warm: bool = False) -> list:
    ctx = "RunContext('bench', 'bench-run', 'bench', 'close-run')"
    code = (f"from advpatch.components._warm import run_in_warm_child; from advpatch.tracking import RunContext; "
            f"assert run_in_warm_child('close_run', {{'state': 'SUCCEEDED'}}, {ctx}) is not None" if warm else
            f"from advpatch import steps; from advpatch.tracking import RunContext; "
            f"steps.close_run(state='SUCCEEDED', ctx={ctx})")
    env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "ADVPATCH_OUTPUT_DIR": str(store)}
    return [sys.executable, "-c", code], env


def _measure(cases, runs, bare, results) -> None:
    for name, (cmd, env) in cases.items():
        ours, ref = [], []
        for _ in range(runs):  # alternate, so that load drifts hit both
            ref.append(timed(bare))
            ours.append(timed(cmd, env))
        o, r = statistics.median(ours), statistics.median(ref)
        results[name] = {"seconds": round(o, 3), "bare_python_s": round(r, 3), "ratio": round(o / r, 1)}
        print(f"{name:26s} {o:7.2f} s   bare python {r:5.3f} s   ratio {o / r:6.1f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--demo", action="store_true", help="also time `advpatch demo` once")
    args = parser.parse_args()
    bare = [sys.executable, "-c", "pass"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        task_args, task_env = whole_task(Path(tmp))
        subprocess.run(task_args, check=True, env=task_env, capture_output=True)  # creates the store once
        cases = {name: ([sys.executable, "-c", code], ENV) for name, code in CASES.items()}
        cases["whole task, cold"] = (task_args, task_env)
        from advpatch.app.warm import wait_ready, warm_starter

        with warm_starter(Path(tmp) / "warm.log") as warm_env:
            if not wait_ready(warm_env, 120):
                raise SystemExit("the warm process did not start: " + (Path(tmp) / "warm.log").read_text())
            warm_args, env = whole_task(Path(tmp), warm=True)
            cases["whole task, warm"] = (warm_args, {**env, **warm_env})
            _measure(cases, args.runs, bare, results)
    if args.demo:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "advpatch.app.cli", "demo"], check=True, stdout=subprocess.DEVNULL)
        results["demo"] = {"seconds": round(time.perf_counter() - started, 1)}
        print(f"{'advpatch demo':26s} {results['demo']['seconds']:7.1f} s (whole command, target < 120 s)")
    out = Path("outputs/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "tasks.json").write_text(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count(),
                                                "runs": args.runs, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Steady memory: ``deploy_patch`` and ``infer`` peak RSS on 2,000 and on 50,000 224x224 images,
each under 1 GiB with ``memory_budget_mb``'s default (and, with ``--budgets``, the peak at other
budgets: batches sized to the budget, issue 24).

    python tests/benchmarks/bench_memory.py [--images 50000] [--small 2000] [--budgets 64,512]

Reads bench_scale.py's generated class folder (``outputs/bench/scale-data/n<N>/images``, made by
``make bench``) into a dataset of all its images and one of ``--small`` of them (once, kept in
``--work``), then runs each step on each in a process of its own (a fixed random 224-pixel patch;
a LeNet-5 at 224x224 with random weights, as bench_scale.py does; both made in a process before),
reading its peak RSS with ``os.wait4``. Steady memory: the peak on 50,000 images over the peak on
2,000, for each step (1.0: the data's size does not show). Prints the figures and writes outputs/bench/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREPARE = """
import sys, numpy as np
from advpatch import models, patches
from advpatch.data.dataset import Dataset
from advpatch.models import training
data, work = sys.argv[1:3]
ds = Dataset(data)
shape = tuple(ds.image_shape)
patches.PatchSet(np.random.default_rng(1).uniform(0, 1, (1, *shape)).astype(np.float32),
                 patches.make_mask(shape[0], "circle")[None], np.array([0], np.int32), ds.class_names,
                 shape).save(work + "/patches")
training.seed_everything(0)
models.save_model(models.build_model("le_net", shape, len(ds.class_names)),
                  models.ModelInfo("le_net", shape, ds.class_names), work + "/model")
"""
CHILD = """
import sys, time
from advpatch import steps
step, data, work = sys.argv[1:4]
options = {"memory_budget_mb": int(sys.argv[4])} if len(sys.argv) > 4 else {}
if step == "deploy_patch":
    run = lambda: steps.deploy_patch(data=data, patches=work + "/patches", patched_data=work + "/out",
                                     patch_scale=0.4, output_tar_name="", **options)
else:
    run = lambda: steps.infer(data=data, model=work + "/model", predictions=work + "/out", **options)
t = time.perf_counter()
run()
print("SECONDS", time.perf_counter() - t)
"""
LIMIT_MIB = 1024  # issue 24: infer and deploy_patch under 1 GiB at 224x224 (memory_budget_mb's default)


def _env(work: Path) -> dict:
    return {**os.environ, "ADVPATCH_OUTPUT_DIR": str(work / "outputs"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}


def measure(step: str, data: Path, work: Path, budget: int = 0) -> dict:
    """The step in a process of its own that imports and runs it, nothing else (the patch set and
    the model are made beforehand, in another process): its peak RSS from ``os.wait4``."""
    for p in ("out", "patches", "model"):
        path = work / p
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-c", PREPARE, str(data), str(work)], check=True, env=_env(work),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    extra = [str(budget)] if budget else []
    proc = subprocess.Popen([sys.executable, "-c", CHILD, step, str(data), str(work), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=_env(work))
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    assert status == 0, f"{step} failed: {out}"
    seconds = float(next(line.split()[1] for line in out.splitlines() if line.startswith("SECONDS")))
    peak = round(usage.ru_maxrss / 1024)
    return {"peak_rss_mib": peak, "step_seconds": round(seconds, 1), "under_1_gib": peak < LIMIT_MIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50000)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--work", default="outputs/bench/memory-work")
    parser.add_argument("--output", default="outputs/bench")
    parser.add_argument("--folder", default="", help="the class folder (default bench_scale.py's for --images)")
    parser.add_argument("--budgets", default="", help="memory_budget_mb values also measured on --small images")
    args = parser.parse_args()
    from advpatch.data.sources import import_dataset

    default = ROOT / "outputs" / "bench" / "scale-data" / f"n{args.images}" / "images"
    folder = Path(args.folder) if args.folder else default
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing: run tests/benchmarks/bench_scale.py --images {args.images} first")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    figures = {}
    for step in ("deploy_patch", "infer"):
        peaks = {}
        for n in (args.small, args.images):
            data = work / f"data-{n}"
            if not (data / "dataset.json").is_file():
                import_dataset(str(folder), data, split="all", max_examples=n if n < args.images else 0)
            started = time.strftime("%H:%M:%S")
            peaks[n] = measure(step, data, work)
            print(f"[{started}] {step} on {n} images: {peaks[n]}", flush=True)
        figures[step] = {**{f"{n} images": v for n, v in peaks.items()},
                         "peak_ratio": round(peaks[args.images]["peak_rss_mib"] / peaks[args.small]["peak_rss_mib"], 3),
                         "under_1_gib": all(v["under_1_gib"] for v in peaks.values())}
        for budget in (int(b) for b in args.budgets.split(",") if b.strip()):
            figures[step][f"memory_budget_mb={budget}, {args.small} images"] = got = measure(
                step, work / f"data-{args.small}", work, budget)
            print(f"{step} on {args.small} images, memory_budget_mb={budget}: {got}", flush=True)
    result = {"figures": figures, "limit_mib": LIMIT_MIB, "load_average": round(os.getloadavg()[0], 2)}
    print(json.dumps(result, indent=1))
    for step, f in figures.items():
        print(f"{step}: peak under 1 GiB at 224x224 ({args.small} and {args.images} images): "
              f"{'yes' if f['under_1_gib'] else 'NO'}")
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "memory.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

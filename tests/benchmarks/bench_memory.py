"""deploy_patch's memory at real size, with and without a fixed malloc mmap threshold.

    python tests/benchmarks/bench_memory.py [--images 50000] [--small 2000]

Reads bench_scale.py's generated class folder (``outputs/bench/scale-data/n<N>/``, made by
``make bench`` or ``bench_scale.py``) into a dataset once, then runs ``deploy_patch`` on it (a
fixed random 224-pixel patch, as bench_scale does) in a process of its own, each time reading its
peak RSS with ``os.wait4``: on the first ``--small`` images and on all of them, with glibc's
default (a threshold that grows as large blocks are freed) and with
``advpatch.settings.steady_memory`` (what the step does). Steady memory: the same peak on 2,000
and on 50,000 images. Prints a table and writes outputs/bench/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import sys, time, numpy as np
from advpatch import settings, steps, patches
from advpatch.dataset import Dataset
if sys.argv[4] == "default":
    settings.steady_memory = lambda: None  # glibc's own behaviour
data, out, work = sys.argv[1], sys.argv[2], sys.argv[3]
ds = Dataset(data)
size = ds.image_shape[0]
patches.PatchSet(np.random.default_rng(1).uniform(0, 1, (1, size, size, 3)).astype(np.float32),
                 patches.make_mask(size, "circle")[None], np.array([0], np.int32), ds.class_names,
                 tuple(ds.image_shape)).save(work + "/patches")
t = time.perf_counter()
steps.deploy_patch(data=data, patches=work + "/patches", patched_data=out, patch_scale=0.4, output_tar_name="")
print("SECONDS", time.perf_counter() - t)
"""


def run(data: Path, work: Path, mode: str) -> dict:
    import shutil

    for p in (work / "out", work / "patches"):
        shutil.rmtree(p, ignore_errors=True)
    env = {**os.environ, "ADVPATCH_OUTPUT_DIR": str(work / "outputs"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(work / "out"), str(work), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    assert status == 0, out
    seconds = float(next(line.split()[1] for line in out.splitlines() if line.startswith("SECONDS")))
    return {"peak_rss_mib": round(usage.ru_maxrss / 1024), "step_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50000)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--work", default="outputs/bench/memory-work")
    parser.add_argument("--output", default="outputs/bench")
    args = parser.parse_args()
    from advpatch.sources import import_dataset

    folder = ROOT / "outputs" / "bench" / "scale-data" / f"n{args.images}" / "images"
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing: run tests/benchmarks/bench_scale.py --images {args.images} first")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = {}
    for n in (args.small, args.images):
        data = work / f"data-{n}"
        if not (data / "dataset.json").is_file():
            import_dataset(str(folder), data, split="all", max_examples=n if n < args.images else 0)
        for mode in ("default", "steady"):
            started = time.strftime("%H:%M:%S")
            rows[f"{n} images, {mode}"] = run(data, work, mode)
            print(f"[{started}] deploy_patch on {n} images, {mode}: {rows[f'{n} images, {mode}']}", flush=True)
    steady_growth = rows[f"{args.images} images, steady"]["peak_rss_mib"] / rows[f"{args.small} images, steady"]["peak_rss_mib"]
    default_growth = rows[f"{args.images} images, default"]["peak_rss_mib"] / rows[f"{args.small} images, default"]["peak_rss_mib"]
    result = {"rows": rows, "peak_growth_steady": round(steady_growth, 3), "peak_growth_default": round(default_growth, 3),
              "load_average": os.getloadavg()[0]}
    print(json.dumps(result, indent=1))
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "memory.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

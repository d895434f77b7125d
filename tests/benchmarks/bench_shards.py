"""Per-shard throughput of the sharded evaluation (eval_shards): deploy_patch of one shard of the
test set (every image and a patched copy, scale 0.4) then infer on it (condition 'split', at
224x224, random weights: LeNet-5, the smallest network advpatch builds, or ResNet50, what ImageNet
runs), against the same two steps unsharded.

    python tests/benchmarks/bench_shards.py [--images 2048] [--shards 4] [--architecture le_net|resnet50]

(make bench runs it for both: LeNet-5 on 2,048 images, ResNet50 on 1,024; a shard is whole blocks of 256.)

The images are random smooth 224x224 RGB pictures written as a dataset; the steps are called
directly (MLflow on a private SQLite store under --work). Prints, for the whole set and for shard 0
of --shards, the source images per second through deploy_patch + infer, each step's seconds, and
the estimated wall time of ImageNet's 50,000 validation images on 1, 4 and 16 pods from the
shard's rate (each pod a machine like this one; pod start and the artifact download not counted).
Merges its figures into outputs/bench/results.json under "shards", by architecture.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np

SIZE, CLASSES = 224, 10


def _data(root: Path, n: int, architecture: str) -> None:
    from advpatch import models, patches
    from advpatch.data.writer import DatasetWriter
    from advpatch.models import training

    names = [f"c{i}" for i in range(CLASSES)]
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, SIZE, dtype=np.float32)
    with DatasetWriter(root / "test", (SIZE, SIZE, 3), names) as writer:
        for start in range(0, n, 256):
            k = min(256, n - start)
            tint = rng.uniform(0.2, 1.0, (k, 1, 1, 3)).astype(np.float32)
            x = (ramp[None, :, None, None] * tint + ramp[None, None, :, None] * (1 - tint)) / 2
            writer.write(x.clip(0, 255).astype(np.uint8), rng.integers(0, CLASSES, k))
    patch = rng.uniform(0, 1, (SIZE, SIZE, 3)).astype(np.float32)
    patches.PatchSet(patch[None], patches.make_mask(SIZE, "circle")[None], np.array([3], np.int32), names,
                     (SIZE, SIZE, 3)).save(root / "patches")
    training.seed_everything(0)
    net = models.build_model(architecture, (SIZE, SIZE, 3), CLASSES)
    models.save_model(net, models.ModelInfo(architecture, (SIZE, SIZE, 3), names), root / "model")


def _shard(root: Path, index: int, count: int, tag: str = "") -> dict:
    from advpatch import steps

    out = root / f"shard-{index}-of-{count}{tag}"
    started = time.monotonic()
    deployed = steps.deploy_patch(data=str(root / "test"), patches=str(root / "patches"), patched_data=str(out),
                                  patch_deployment_method="augment", patch_scale=0.4, output_tar_name="",
                                  shard_index=index, shard_count=count, seed=0)
    middle = time.monotonic()
    steps.infer(data=str(out), model=str(root / "model"), predictions=str(out) + ".csv",
                shard_result=str(out) + "-result", condition="split", seed=0)
    done = time.monotonic()
    n = int(deployed.metrics["num_patched"])
    return {"images": n, "deploy_s": round(middle - started, 2), "infer_s": round(done - middle, 2),
            "images_per_s": round(n / (done - started), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--architecture", default="le_net", choices=("le_net", "resnet50"))
    args = parser.parse_args(argv)
    root = args.work or Path(tempfile.mkdtemp(prefix="bench-shards-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["ADVPATCH_OUTPUT_DIR"] = str(root / "outputs")
    _data(root, args.images, args.architecture)
    _shard(root, 0, max(1, args.images // 256), "-warm")  # warm: TensorFlow's first graphs, on 256 images
    figures = {"architecture": args.architecture, "images": args.images,
               "whole": _shard(root, 0, 1), "shard": _shard(root, 0, args.shards), "shards": args.shards,
               "load_1min": round(os.getloadavg()[0], 2), "cpus": len(os.sched_getaffinity(0))}
    rate = figures["shard"]["images_per_s"]
    figures["imagenet_50000_s"] = {pods: round(50000 / pods / rate) for pods in (1, 4, 16)}
    print(json.dumps(figures, indent=1))
    results = Path("outputs/bench/results.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(results.read_text()) if results.is_file() else {}
    shards = data.get("shards") if isinstance(data.get("shards"), dict) and "whole" not in data["shards"] else {}
    results.write_text(json.dumps({**data, "shards": {**shards, args.architecture: figures}}, indent=1,
                                  sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

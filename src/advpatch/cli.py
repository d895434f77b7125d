"""``advpatch``: run the demo or any pipeline locally, from the command line.

    advpatch demo [--data DIR]               the MNIST experiment on the embedded digits (or DIR)
    advpatch run PIPELINE [-p NAME=VALUE]    any pipeline, with parameters
    advpatch list                            the pipelines and their parameters
    advpatch compile [PIPELINE ...] [options] compiled YAML for a cluster (GPU placement, secrets)
    advpatch submit --host URL --package F   upload to a KFP API, start a run, optionally wait
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from advpatch import __version__, params, settings

DEMO_PIPELINE = "mnist-experiment"


def _parse_params(pairs: List[str], pipeline) -> Dict[str, Any]:
    """NAME=VALUE strings -> typed arguments, by the pipeline's declared parameter types."""
    declared = pipeline.component_spec.inputs or {}
    out: Dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise params.ParameterError(f"-p takes NAME=VALUE, got {pair!r}")
        if name not in declared:
            raise params.ParameterError(f"{name} is not a parameter of {pipeline.name}; it has {', '.join(declared)}")
        kind = declared[name].type
        try:
            if kind == "Integer":
                out[name] = int(raw)
            elif kind == "Float":
                out[name] = float(raw)
            elif kind == "Boolean":
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                out[name] = raw.lower() in ("true", "1")
            else:
                out[name] = raw
        except ValueError:
            raise params.ParameterError(f"{name} must be of type {kind}, got {raw!r}") from None
    return out


def run(pipeline_name: str, arguments: Dict[str, Any], output: Path) -> Dict[str, Any]:
    from advpatch.pipelines import PIPELINES
    from advpatch.pipelines.local import run_local

    for name, value in arguments.items():  # fail in milliseconds, not inside a task
        if name in params.RANGES or name in params.CHOICES:
            params.check(**{name: value})
    output = output.resolve()
    log_file = output / "pipeline.log"
    log_file.unlink(missing_ok=True)
    os.environ[settings.ENV_OUTPUT_DIR] = str(settings.output_dir())  # absolute, for the task subprocesses
    os.environ.setdefault(settings.ENV_TRACKING_URI, f"sqlite:///{settings.output_dir() / 'mlflow' / 'mlflow.db'}")
    settings.no_telemetry()
    settings.quiet_tensorflow()
    started = time.monotonic()
    print(f"running pipeline {pipeline_name} locally (task logs: {log_file}) ...", flush=True)
    results = run_local(PIPELINES[pipeline_name], arguments, settings.output_dir() / "kfp", log_file=log_file)
    results["wall_time_s"] = round(time.monotonic() - started, 1)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    return results


def compile_pipelines(args) -> List[Path]:
    """``advpatch compile``: each pipeline built with a cluster placement, compiled to YAML."""
    from kfp import compiler

    from advpatch.pipelines import BUILDERS
    from advpatch.pipelines.placement import cluster

    names = args.pipelines or sorted(BUILDERS)
    for name in names:
        if name not in BUILDERS:
            raise params.ParameterError(f"pipeline must be one of {', '.join(BUILDERS)}, got {name!r}")
    image = args.image
    if not image and (args.image_registry or args.image_tag):
        registry = (args.image_registry or settings.DEFAULT_IMAGE_REGISTRY).rstrip("/")
        image = f"{registry}/{settings.IMAGE_NAME}:{args.image_tag or __version__}"
    selector = None
    if args.node_selector is not None:
        selector = {}
        for pair in args.node_selector:
            key, eq, value = pair.partition("=")
            if not eq or not key:
                raise params.ParameterError(f"--node-selector takes KEY=VALUE, got {pair!r}")
            selector[key] = value
    placement = cluster(
        gpu=not args.no_gpu, gpu_steps=[s for s in args.gpu_steps.split(",") if s] or None,
        accelerator_type=args.accelerator_type, accelerator_limit=args.accelerator_limit, node_selector=selector,
        tolerations=args.toleration, cpu_request=args.cpu_request, cpu_limit=args.cpu_limit,
        memory_request=args.memory_request, memory_limit=args.memory_limit, image=image or settings.runtime_image(),
        gpu_image=args.gpu_image,
        s3_secret=args.s3_secret, config_map=args.config_map,
    )
    out = Path(args.output)
    paths = []
    for name in names:
        path = out if out.suffix in (".yaml", ".yml") else out / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(BUILDERS[name](placement), str(path))
        paths.append(path)
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="advpatch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the MNIST experiment locally")
    demo.add_argument("--data", default="", help="an MNIST folder (training/ and testing/); default: embedded digits")
    demo.add_argument("--output", default="outputs/demo", help="where results.json goes (default: outputs/demo)")
    runp = sub.add_parser("run", help="run a pipeline locally")
    runp.add_argument("pipeline")
    runp.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    runp.add_argument("--output", default="outputs/run")
    sub.add_parser("list", help="list pipelines and their parameters")
    comp = sub.add_parser("compile", help="compile pipelines to YAML with cluster placement")
    comp.add_argument("pipelines", nargs="*", help="names (default: all)")
    comp.add_argument("--output", default="outputs/compiled", help="a folder (one <name>.yaml each) or a .yaml file")
    comp.add_argument("--no-gpu", action="store_true", help="place no step on a GPU")
    comp.add_argument("--gpu-steps", default="", help="comma-separated component names "
                      "(default: train,init_model,gen_patch,deploy_patch,infer)")
    comp.add_argument("--accelerator-type", default="nvidia.com/gpu")
    comp.add_argument("--accelerator-limit", type=int, default=1)
    comp.add_argument("--node-selector", action="append", default=None, metavar="KEY=VALUE",
                      help="for GPU steps (default: nvidia.com/gpu.present=true)")
    comp.add_argument("--toleration", action="append", default=None, metavar="KEY[=VALUE][:EFFECT]",
                      help="for GPU steps (default: nvidia.com/gpu:NoSchedule)")
    comp.add_argument("--cpu-request", default="1")
    comp.add_argument("--cpu-limit", default="4")
    comp.add_argument("--memory-request", default="2Gi")
    comp.add_argument("--memory-limit", default="8Gi")
    comp.add_argument("--image", default="", help="runtime image (default: $ADVPATCH_IMAGE or registry/advpatch:tag)")
    comp.add_argument("--gpu-image", default="", help="image for GPU steps (default: the image's tag + '-gpu')")
    comp.add_argument("--image-registry", default="")
    comp.add_argument("--image-tag", default="")
    comp.add_argument("--s3-secret", default="mlpipeline-minio-artifact",
                      help="Kubernetes secret with accesskey/secretkey ('' for none)")
    comp.add_argument("--config-map", default="advpatch-config",
                      help="ConfigMap with MLFLOW_TRACKING_URI and the S3 endpoint ('' for none)")
    subm = sub.add_parser("submit", help="upload a compiled pipeline to a KFP API and start a run")
    subm.add_argument("--host", required=True, help="KFP API, e.g. http://ml-pipeline.kubeflow:8888")
    subm.add_argument("--package", required=True, help="a compiled pipeline YAML")
    subm.add_argument("--pipeline-name", default="", help="default: the pipeline's own name")
    subm.add_argument("--experiment", default="advpatch")
    subm.add_argument("--run-name", default="")
    subm.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    subm.add_argument("--wait", action="store_true", help="wait for the run; exit 1 unless it succeeds")
    subm.add_argument("--timeout", type=int, default=3600, help="seconds to wait")
    subm.add_argument("--poll", type=float, default=10.0, help="seconds between status checks")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from advpatch.pipelines import PIPELINES
    from advpatch.pipelines.local import PipelineFailed
    from advpatch.report import render_markdown

    try:
        if args.command == "list":
            for name, pipeline in PIPELINES.items():
                print(f"{name}: {pipeline.description}")
                for pname, spec in (pipeline.component_spec.inputs or {}).items():
                    print(f"    {pname} ({spec.type}) = {spec.default!r}")
            return 0
        if args.command == "compile":
            for path in compile_pipelines(args):
                print(path)
            return 0
        if args.command == "submit":
            from advpatch.submit import submit

            return submit(args)
        if args.command == "demo":
            name, arguments = DEMO_PIPELINE, ({"data_dir": str(Path(args.data).resolve())} if args.data else {})
        else:
            if args.pipeline not in PIPELINES:
                raise params.ParameterError(f"pipeline must be one of {', '.join(PIPELINES)}, got {args.pipeline!r}")
            name, arguments = args.pipeline, _parse_params(args.param, PIPELINES[args.pipeline])
        results = run(name, arguments, Path(args.output))
    except params.ParameterError as e:
        print(f"advpatch: error: {e}", file=sys.stderr)
        return 2
    except PipelineFailed as e:
        print(f"advpatch: {e}", file=sys.stderr)
        return 1
    print()
    print(render_markdown(results))
    print(f"results: {Path(args.output) / 'results.json'} ({results['wall_time_s']} s)")
    print(f"MLflow:  make mlflow-ui  (store: {os.environ[settings.ENV_TRACKING_URI]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

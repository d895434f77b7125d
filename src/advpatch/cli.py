"""``advpatch``: run the demo or any pipeline locally, from the command line.

    advpatch demo [--data DIR]               the MNIST experiment on the embedded digits (or DIR)
    advpatch run PIPELINE [-p NAME=VALUE]    any pipeline, with parameters
    advpatch list                            the pipelines and their parameters
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

from advpatch import params, settings

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

"""``advpatch``: run the demo or any pipeline locally, compile for a cluster, submit to KFP.

    advpatch demo [--data DIR]                the MNIST experiment on the embedded digits (or DIR)
    advpatch run PIPELINE [-p NAME=VALUE ...] any pipeline, with parameters
    advpatch list                             the pipelines and their parameters
    advpatch compare [RUN_ID ...] [--html F]  pipeline runs side by side (an experiment's latest)
    advpatch compile [PIPELINE ...] [options] compiled YAML for a cluster (GPU placement, secrets)
    advpatch submit --host URL --package F    upload to a KFP API, start a run, optionally wait

Parameters are checked against the parameter table before anything runs: a bad value costs
milliseconds, not a training run. Exit status: 0 done, 1 a pipeline or a KFP run failed, 2 bad
input (one line says what), 3 a service failed after its retries (MLflow, S3, the KFP API).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from advpatch import __version__, params, settings
from advpatch.errors import ERROR_PREFIX, AdvpatchError, ServiceError

DEMO_PIPELINE = "mnist-experiment"


def parse_arguments(pipeline: str, pairs: List[str]) -> Dict[str, Any]:
    """``NAME=VALUE`` strings -> a pipeline's arguments, typed and checked by the parameter table."""
    declared = {p.name: p for p in params.PIPELINE_PARAMS[pipeline]}
    out: Dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise params.ParameterError(f"-p takes NAME=VALUE, got {pair!r}")
        if name not in declared:
            raise params.ParameterError(f"{name} is not a parameter of {pipeline}; it has {', '.join(declared)}")
        out[name] = params.parse_text(name, declared[name].type, raw)
    params.validate_pipeline(pipeline, out)
    return out


def fit_to_data(pipeline: str, arguments: Dict[str, Any], *, choose_target: bool = False) -> Dict[str, Any]:
    """The checks that need the data, before any task runs: a local ``data_dir`` read as its tasks
    will read it (:func:`advpatch.data.sources.check_source`), a patch target the data's classes have
    (by index or by name). With ``choose_target`` (the demo, on a user's folder) a default target
    the data lacks becomes its last class; a target the user gave is never changed, only refused."""
    from advpatch.data.sources import check_source, class_names
    from advpatch.patches.optimizer import target_index

    declared = {p.name for p in params.PIPELINE_PARAMS[pipeline]}
    values = params.validate_pipeline(pipeline, arguments)
    specs = {}
    if "data_dir" in declared:
        try:
            specs = check_source(values["data_dir"], image_size=values.get("image_size", 0),
                                 color_mode=values.get("color_mode", "auto"), class_index=values.get("class_index", ""))
        except AdvpatchError as e:
            raise type(e)(f"data_dir: {e}") from None
    check_model_files(values, specs)
    if "patch_target" not in declared:
        return arguments
    names = class_names(values["data_dir"], "train", values.get("class_index", ""))
    by_name = values.get("patch_target_name", "")
    if names is None or (not by_name and values["patch_target"] < len(names)):
        if names is not None:
            target_index(values["patch_target"], by_name, names)
        return arguments
    if choose_target and not by_name and "patch_target" not in arguments:
        print(f"note: {values['data_dir']} has {len(names)} classes: the patch target is its last, "
              f"{len(names) - 1} ({names[-1]}), not the default {values['patch_target']}")
        return {**arguments, "patch_target": len(names) - 1}
    try:
        target_index(values["patch_target"], by_name, names)
    except params.ParameterError as e:
        raise params.ParameterError(f"{e} ({values['data_dir']} has {len(names)} classes: "
                                    f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''})") from None
    return arguments


def check_environment(arguments: Dict[str, Any]) -> None:
    """What a run needs from its environment, checked before any task: an S3 endpoint and
    credentials when an argument is an ``s3://`` location, a tracking URI MLflow takes."""
    from advpatch.data.sources import S3_PREFIX
    from advpatch.io import storage
    from advpatch.tracking.faults import check_uri

    on_s3 = [name for name, value in arguments.items() if isinstance(value, str) and value.startswith(S3_PREFIX)]
    if on_s3:
        try:
            storage.check_settings()
        except AdvpatchError as e:
            raise type(e)(f"{on_s3[0]}={arguments[on_s3[0]]} needs S3: {e}") from None
    if os.environ.get(settings.ENV_TRACKING_URI):
        check_uri(os.environ[settings.ENV_TRACKING_URI])


def check_model_files(values: Dict[str, Any], specs: Dict[str, Any]) -> None:
    """A local ``model_file`` (a readable .keras archive, taking the data's images when both are
    known) and local ``weights`` (Keras' file for the architecture), checked before any task."""
    from advpatch.data.sources import S3_PREFIX
    from advpatch.models import ModelError, check_weights, keras_file

    model_file, weights = values.get("model_file", ""), values.get("weights", "")
    if model_file and not model_file.startswith(S3_PREFIX):
        shape = keras_file.check_model_file(model_file)
        spec = specs.get("test")
        if spec is not None and shape is not None and not keras_file.fits(shape, spec.image_shape):
            raise ModelError(f"model_file {model_file} takes {'x'.join(str(d or '?') for d in shape)} images but "
                             f"data_dir's are {'x'.join(map(str, spec.image_shape))}: set image_size and color_mode "
                             "to the model's")
    if weights and not weights.startswith(S3_PREFIX):
        check_weights(values["model_architecture"], weights)


def _parser() -> argparse.ArgumentParser:
    from advpatch.app.compiler import add_arguments as add_compile_arguments

    parser = argparse.ArgumentParser(prog="advpatch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"advpatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the MNIST experiment locally")
    demo.add_argument("--data", default="", help="an MNIST folder (training/ and testing/), or any data_dir source "
                      "(s3://..., mlflow-run://...); default: embedded digits")
    demo.add_argument("--output", type=Path, default=None,
                      help="where results.json and pipeline.log go (default: $ADVPATCH_OUTPUT_DIR/demo)")
    runp = sub.add_parser("run", help="run a pipeline locally")
    runp.add_argument("pipeline", help=f"one of {', '.join(params.PIPELINE_PARAMS)} (advpatch list)")
    runp.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                      help="a pipeline parameter (advpatch list shows them); repeat for more")
    runp.add_argument("--output", type=Path, default=None,
                      help="where results.json and pipeline.log go (default: $ADVPATCH_OUTPUT_DIR/run)")
    runp.add_argument("--eval-shards", type=int, default=1, metavar="N",
                      help="evaluate the test set in N shards, each its own tasks, merged exactly (default: 1)")
    sub.add_parser("list", help="list pipelines and their parameters")
    comp = sub.add_parser("compare", help="pipeline runs side by side: parameters that differ, every row")
    comp.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="MLflow ids of pipeline runs (default: the "
                      "experiment's latest finished ones)")
    comp.add_argument("--experiment", default="", help="MLflow experiment (default: $ADVPATCH_EXPERIMENT or "
                      "'advpatch'; the demo's is 'mnist')")
    comp.add_argument("--last", type=int, default=10, help="how many of the experiment's latest runs")
    comp.add_argument("--html", type=Path, default=None, help="also write the comparison as an HTML page")
    add_compile_arguments(sub.add_parser("compile", help="compile pipelines to YAML with cluster placement"))
    subm = sub.add_parser("submit", help="upload a compiled pipeline to a KFP API and start a run")
    subm.add_argument("--host", required=True, help="KFP API, e.g. http://ml-pipeline.kubeflow:8888")
    subm.add_argument("--package", required=True, help="a compiled pipeline YAML")
    subm.add_argument("--pipeline-name", default="", help="default: the pipeline's own name")
    subm.add_argument("--experiment", default="advpatch")
    subm.add_argument("--run-name", default="")
    subm.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    subm.add_argument("--namespace", default="", help="multi-user KFP: the profile namespace (default: "
                      "$KFP_NAMESPACE, else this pod's namespace; single-user: none)")
    subm.add_argument("--token-path", default="", help="a service-account token file to authenticate with "
                      "(default: $KF_PIPELINES_SA_TOKEN_PATH or KFP's default path, when the file exists)")
    subm.add_argument("--wait", action="store_true", help="wait for the run; exit 1 unless it succeeds")
    subm.add_argument("--timeout", type=int, default=3600, help="seconds to wait")
    subm.add_argument("--poll", type=float, default=10.0, help="seconds between status checks")
    return parser


def list_pipelines() -> None:
    from advpatch.pipelines import PIPELINES

    for name, pipeline in PIPELINES.items():
        summary = " ".join((pipeline.description or "").split("\n\n")[0].split())
        print(f"{name}: {summary}")
        for p in params.PIPELINE_PARAMS[name]:
            print(f"    {p.name} ({p.type_name}, default {p.default!r}): {p.doc}")


def compare_runs(args: argparse.Namespace) -> int:
    from advpatch.report import compare

    if args.last < 2:
        raise params.ParameterError(f"--last must be an integer >= 2, got {args.last}")
    doc = compare.compare(compare.fetch_runs(args.experiment, args.run_ids, args.last))
    print(compare.render_markdown(doc))
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(compare.render_html(doc))
        print(f"report: {args.html.resolve()}")
    return 0


def _mlflow_hint() -> str:
    uri = os.environ.get(settings.ENV_TRACKING_URI) or settings.local_tracking_uri()
    if uri == settings.local_tracking_uri():
        return f"make mlflow-ui  (or: mlflow ui --backend-store-uri {uri})"
    return uri


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)  # so that a run's clean-up (its MLflow server, warm process) still happens


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv is None:  # the command itself (not a caller's main([...])): SIGTERM and SIGHUP end it cleanly
        import signal

        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _exit_on_signal)
    from advpatch.app.local import PipelineFailed
    from advpatch.report import render_markdown

    try:
        if args.command == "list":
            list_pipelines()
            return 0
        if args.command == "compile":
            from advpatch.app.compiler import compile_pipelines

            for path in compile_pipelines(args):
                print(path)
            return 0
        if args.command == "compare":
            return compare_runs(args)
        if args.command == "submit":
            from advpatch.app.submit import submit

            return submit(args)
        if args.command == "demo":
            name, output, default_name = DEMO_PIPELINE, args.output, "demo"
            data = args.data if "://" in args.data else str(Path(args.data).resolve())  # s3://, mlflow-run://
            arguments = {"data_dir": data} if args.data else {}
            check_environment(arguments)
            arguments = fit_to_data(name, arguments, choose_target=True)
        else:
            if args.pipeline not in params.PIPELINE_PARAMS:
                raise params.ParameterError(
                    f"pipeline must be one of {', '.join(params.PIPELINE_PARAMS)}, got {args.pipeline!r}")
            name, output, default_name = args.pipeline, args.output, "run"
            params.check(eval_shards=args.eval_shards)
            arguments = parse_arguments(args.pipeline, args.param)
            check_environment(arguments)
            arguments = fit_to_data(name, arguments)
        from advpatch.app.local import run_pipeline

        results = run_pipeline(name, arguments, output, default_name,
                               eval_shards=getattr(args, "eval_shards", 1))
    except ServiceError as e:  # a service failed after its retries: 3, so that a script can tell it from bad input
        print(f"{ERROR_PREFIX}{e}", file=sys.stderr)
        return 3
    except AdvpatchError as e:
        print(f"{ERROR_PREFIX}{e}", file=sys.stderr)
        return 2
    except PipelineFailed as e:
        print(f"advpatch: pipeline failed: {e}", file=sys.stderr)
        return 1
    print()
    print(render_markdown(results))
    out = Path(results["output"])
    print(f"pipeline finished in {results['wall_time_s']} s")
    print(f"results: {out / 'results.json'}")
    if (out / "report.html").is_file():
        print(f"report:  {out / 'report.html'}")
        print(f"         open it: python -m webbrowser -t {(out / 'report.html').as_uri()}")
    print(f"MLflow:  {_mlflow_hint()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

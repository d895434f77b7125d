"""``advpatch submit``: upload a compiled pipeline to a KFP API, start a run, optionally wait.

Uses ``kfp.Client`` (KFP API v2beta1): the pipeline is uploaded under its name (a new version
when the name exists), the experiment is created when missing, and the run gets the ``-p``
arguments, typed by the pipeline's own parameter declarations. With ``--wait`` the command
polls until the run ends and exits 0 only when it SUCCEEDED, so a Kubernetes Job running it fails
with the run (manifests/ci).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import yaml

from advpatch import params
from advpatch.errors import AdvpatchError

log = logging.getLogger(__name__)

FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED")


def read_package(path: str) -> Dict[str, Any]:
    """The pipeline spec (first YAML document) of a compiled pipeline."""
    p = Path(path)
    if not p.is_file():
        raise params.ParameterError(f"package {path!r} does not exist")
    docs = list(yaml.safe_load_all(p.read_text()))
    if not docs or "pipelineInfo" not in docs[0]:
        raise params.ParameterError(f"{path} is not a compiled KFP pipeline (no pipelineInfo)")
    return docs[0]


SPEC_TYPES = {"NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool, "STRING": str}
"""A compiled pipeline's parameter types -> Python types."""


def typed_arguments(spec: Dict[str, Any], pairs: List[str]) -> Dict[str, Any]:
    """NAME=VALUE strings -> values typed by the pipeline's declared parameter types; for an
    advpatch pipeline also checked against the parameter table."""
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    out: Dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or name not in declared:
            raise params.ParameterError(
                f"-p takes NAME=VALUE with NAME among {', '.join(sorted(declared))}, got {pair!r}")
        out[name] = params.parse_text(name, SPEC_TYPES.get(declared[name].get("parameterType"), str), raw)
    ours = spec["pipelineInfo"]["name"].removeprefix("advpatch-")
    if ours in params.PIPELINE_PARAMS:
        params.validate_pipeline(ours, out)
    return out


class SubmitError(AdvpatchError):
    """The KFP API could not be reached or refused a request."""


def submit(args) -> int:
    import urllib3
    from kfp_server_api.exceptions import ApiException

    spec = read_package(args.package)
    arguments = typed_arguments(spec, args.param)
    try:
        return _submit(args, spec, arguments)
    except (OSError, urllib3.exceptions.HTTPError) as e:
        raise SubmitError(f"cannot reach the KFP API at {args.host}: {type(e).__name__}") from None
    except ApiException as e:
        raise SubmitError(f"the KFP API at {args.host} refused a request: {e.status} {e.reason}") from None


def _submit(args, spec: Dict[str, Any], arguments: Dict[str, Any]) -> int:
    import kfp

    name = args.pipeline_name or spec["pipelineInfo"]["name"]
    client = kfp.Client(host=args.host)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(args.package, pipeline_name=name)
        pipeline_id = pipeline.pipeline_id
        versions = client.list_pipeline_versions(pipeline_id).pipeline_versions or []
        version_id = versions[0].pipeline_version_id
    else:
        version = client.upload_pipeline_version(args.package, pipeline_version_name=f"{name}-{stamp}",
                                                 pipeline_id=pipeline_id)
        version_id = version.pipeline_version_id
    experiment = client.create_experiment(args.experiment)
    run = client.run_pipeline(experiment_id=experiment.experiment_id, job_name=args.run_name or f"{name}-{stamp}",
                              params=arguments, pipeline_id=pipeline_id, version_id=version_id)
    print(f"run {run.run_id} started: pipeline {name} ({pipeline_id}), version {version_id}", flush=True)
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    state = ""
    while time.monotonic() < deadline:
        state = str(client.get_run(run.run_id).state or "")
        if state in FINAL_STATES:
            break
        time.sleep(args.poll)
    else:
        print(f"run {run.run_id} did not finish within {args.timeout} s (last state {state or 'unknown'})",
              file=sys.stderr)
        return 1
    print(f"run {run.run_id} {state}", flush=True)
    return 0 if state == "SUCCEEDED" else 1

"""``advpatch submit``: upload a compiled pipeline to a KFP API, start a run, optionally wait.

Uses ``kfp.Client`` (KFP API v2beta1): the pipeline is uploaded under its name (a new version
when the name exists), the experiment is created when missing (in the namespace, on multi-user
KFP), and the run gets the ``-p`` arguments, typed by the pipeline's own parameter declarations.
On multi-user KFP every call carries a service-account token (:func:`token_path`) and the runs go
to a profile namespace (:func:`namespace`). With ``--wait`` the command
polls until the run ends and exits 0 only when it SUCCEEDED, so a Kubernetes Job running it fails
with the run (manifests/ci); a wait cut short (its timeout, SIGTERM when the Job is deleted or
passes its deadline) terminates the run.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import yaml

from advpatch import params
from advpatch.errors import KFPError

log = logging.getLogger(__name__)

FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED")
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
TOKEN_PATH_DEFAULT = "/var/run/secrets/kubeflow/pipelines/token"
"""KFP's own names (kfp.client): where a projected service-account token for the audience
``pipelines.kubeflow.org`` is mounted."""
NAMESPACE_ENV = "KFP_NAMESPACE"
POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


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



def submit(args) -> int:
    import urllib3
    from kfp_server_api.exceptions import ApiException

    spec = read_package(args.package)
    arguments = typed_arguments(spec, args.param)
    try:
        return _submit(args, spec, arguments)
    except KFPError:  # already says what failed (and is an OSError too: a ServiceError is a ConnectionError)
        raise
    except (OSError, urllib3.exceptions.HTTPError) as e:
        raise KFPError(f"cannot reach the KFP API at {args.host}: {type(e).__name__}") from None
    except ApiException as e:
        raise KFPError(f"the KFP API at {args.host} refused a request: {e.status} {e.reason}") from None


def token_path(args) -> str:
    """The service-account token to present (multi-user KFP authenticates every call by it):
    ``--token-path``, else KFP's own ``KF_PIPELINES_SA_TOKEN_PATH``, else KFP's default location;
    ``""`` when there is no such file (single-user KFP needs none)."""
    path = args.token_path or os.environ.get(TOKEN_PATH_ENV) or TOKEN_PATH_DEFAULT
    return path if Path(path).is_file() else ""


def namespace(args) -> str:
    """The namespace (multi-user KFP's profile namespace) runs go to: ``--namespace``, else
    ``KFP_NAMESPACE`` (the CI Job sets it to its own namespace), else the pod's own namespace when
    running in one; ``""`` for single-user KFP."""
    if args.namespace or os.environ.get(NAMESPACE_ENV):
        return args.namespace or os.environ[NAMESPACE_ENV]
    pod = Path(POD_NAMESPACE_FILE)
    return pod.read_text().strip() if pod.is_file() else ""


def _pipeline_id(client, name: str, ns: str):
    """The id of the pipeline called ``name`` (in ``ns`` on multi-user KFP), or ``None``."""
    import json

    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found = client.list_pipelines(filter=flt, namespace=ns or None).pipelines or []
    return found[0].pipeline_id if found else None


def _submit(args, spec: Dict[str, Any], arguments: Dict[str, Any]) -> int:
    import kfp
    from kfp.client import ServiceAccountTokenVolumeCredentials

    name = args.pipeline_name or spec["pipelineInfo"]["name"]
    token, ns = token_path(args), namespace(args)
    client = kfp.Client(host=args.host, namespace=ns or "kubeflow",
                        credentials=ServiceAccountTokenVolumeCredentials(token) if token else None)
    log.info("KFP API %s, namespace %s, %s", args.host, ns or "(single-user)", "token" if token else "no token")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    pipeline_id = _pipeline_id(client, name, ns)
    if pipeline_id is None:  # on multi-user KFP the namespace's own pipeline, else a shared one
        pipeline = client.upload_pipeline(args.package, pipeline_name=name, namespace=ns or None)
        pipeline_id = pipeline.pipeline_id
        versions = client.list_pipeline_versions(pipeline_id).pipeline_versions or []
        version_id = versions[0].pipeline_version_id
    else:
        version = client.upload_pipeline_version(args.package, pipeline_version_name=f"{name}-{stamp}",
                                                 pipeline_id=pipeline_id)
        version_id = version.pipeline_version_id
    experiment = client.create_experiment(args.experiment, namespace=ns or None)
    run = client.run_pipeline(experiment_id=experiment.experiment_id, job_name=args.run_name or f"{name}-{stamp}",
                              params=arguments, pipeline_id=pipeline_id, version_id=version_id)
    print(f"run {run.run_id} started: pipeline {name} ({pipeline_id}), version {version_id}", flush=True)
    if not args.wait:
        return 0
    return _wait(client, run.run_id, args.timeout, args.poll)


POLL_ERRORS_TOLERATED = 3
"""Polls in a row that may fail (an API server restarting, a dropped connection) before the wait
gives up."""


class _Stopped(BaseException):
    """The process was told to stop (SIGTERM: the Job was deleted or ran past its deadline); not an
    Exception, so that no handler of a failed poll takes it for one."""


def _stop(signum, frame):
    raise _Stopped()


def _wait(client, run_id: str, timeout: float, poll: float) -> int:
    """Poll until the run ends: 0 when it SUCCEEDED, else 1. A wait cut short (``timeout``, SIGTERM,
    Ctrl-C) terminates the run, so that no pipeline goes on running for a CI job that gave up on it."""
    import signal

    previous = signal.signal(signal.SIGTERM, _stop)
    deadline, state, failures = time.monotonic() + timeout, "", 0
    try:
        while time.monotonic() < deadline:
            try:
                state, failures = str(client.get_run(run_id).state or ""), 0
            except Exception as e:
                failures += 1
                if failures > POLL_ERRORS_TOLERATED:
                    raise KFPError(f"lost the KFP API while waiting for run {run_id}: "
                                        f"{failures} polls in a row failed ({type(e).__name__})") from None
            if state in FINAL_STATES:
                print(f"run {run_id} {state}", flush=True)
                return 0 if state == "SUCCEEDED" else 1
            time.sleep(poll)
        why = f"did not finish within {timeout:g} s (last state {state or 'unknown'})"
    except (_Stopped, KeyboardInterrupt):
        why = "was still running when advpatch submit was stopped"
    finally:
        signal.signal(signal.SIGTERM, previous)
    client.terminate_run(run_id)
    print(f"run {run_id} {why}: terminated", file=sys.stderr, flush=True)
    return 1

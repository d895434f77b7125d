"""``advpatch compile``: each pipeline built with a cluster placement, compiled to YAML."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from advpatch import __version__, params, settings


def add_arguments(comp: argparse.ArgumentParser) -> None:
    from advpatch.app.placement import (
        CONFIG_MAP_DEFAULT,
        GPU_STEPS_DEFAULT,
        MLFLOW_SECRET_DEFAULT,
        RUN_AS,
        S3_SECRET_DEFAULT,
    )

    comp.add_argument("pipelines", nargs="*", help=f"names (default: all of {', '.join(params.PIPELINE_PARAMS)})")
    comp.add_argument("--output", default="outputs/compiled", help="a folder (one <name>.yaml each) or a .yaml file")
    comp.add_argument("--eval-shards", type=int, default=1, metavar="N",
                      help="evaluate the test set in N shards, each its own pods, merged exactly (default: 1)")
    comp.add_argument("--no-gpu", action="store_true", help="place no step on a GPU")
    comp.add_argument("--gpu-steps", default="", help="comma-separated component names "
                      f"(default: {','.join(sorted(GPU_STEPS_DEFAULT))})")
    comp.add_argument("--accelerator-type", default="nvidia.com/gpu")
    comp.add_argument("--accelerator-limit", type=int, default=1)
    comp.add_argument("--node-selector", action="append", default=None, metavar="KEY=VALUE",
                      help="for GPU steps (default: nvidia.com/gpu.present=true; --node-selector '' for none)")
    comp.add_argument("--toleration", action="append", default=None, metavar="KEY[=VALUE][:EFFECT]",
                      help="for GPU steps (default: nvidia.com/gpu:NoSchedule)")
    comp.add_argument("--cpu-request", default="1")
    comp.add_argument("--cpu-limit", default="4")
    comp.add_argument("--memory-request", default="2Gi")
    comp.add_argument("--memory-limit", default="8Gi")
    comp.add_argument("--image", default="", help="runtime image (default: $ADVPATCH_IMAGE or registry/advpatch:tag)")
    comp.add_argument("--gpu-image", default="", help="image for GPU steps (default: the image's tag + '-gpu'; "
                      "needed when --image is pinned by digest)")
    comp.add_argument("--image-registry", default="")
    comp.add_argument("--image-tag", default="")
    comp.add_argument("--image-pull-secret", action="append", default=[], metavar="NAME",
                      help="a Kubernetes secret to pull the images with (repeat for more)")
    comp.add_argument("--run-as-user", type=int, default=RUN_AS,
                      help=f"UID (and GID) every step runs as, non-root (default: {RUN_AS}, the images' user)")
    comp.add_argument("--s3-secret", default=S3_SECRET_DEFAULT,
                      help="Kubernetes secret with accesskey/secretkey ('' for none)")
    comp.add_argument("--mlflow-secret", default=MLFLOW_SECRET_DEFAULT,
                      help="Kubernetes secret with the MLflow server's basic-auth username/password ('' for none)")
    comp.add_argument("--config-map", default=CONFIG_MAP_DEFAULT,
                      help="ConfigMap with MLFLOW_TRACKING_URI and the S3 endpoint ('' for none)")
    comp.add_argument("--kfp-mlflow", action="store_true",
                      help="the cluster runs KFP's MLflow integration (injectUserEnvVars): steps log into "
                           "KFP's runs, and the pipeline maps neither MLFLOW_TRACKING_URI nor MLflow credentials")
    comp.add_argument("--no-cache", action="store_true", help="no task's outputs come from KFP's cache")
    comp.add_argument("--kubernetes-manifests", action="store_true",
                      help="write Pipeline and PipelineVersion resources (for KFP installs that store pipelines "
                           "in Kubernetes: kubectl apply -f) instead of a pipeline package")
    comp.add_argument("--namespace", default="", help="with --kubernetes-manifests: the resources' namespace")
    comp.add_argument("--version-name", default="",
                      help="with --kubernetes-manifests: the PipelineVersion's name (default: "
                           "<pipeline>-<version>-<UTC time>, new for every build: KFP never changes a version)")


def compile_pipelines(args) -> List[Path]:
    """Compile the pipelines ``args`` names (all by default) with the placement its options describe."""
    from kfp import compiler

    from advpatch.app.placement import cluster
    from advpatch.pipelines import BUILDERS, build

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
            if pair == "":
                continue  # --node-selector '': no selector at all
            key, eq, value = pair.partition("=")
            if not eq or not key:
                raise params.ParameterError(f"--node-selector takes KEY=VALUE (or '' for none), got {pair!r}")
            selector[key] = value
    placement = cluster(
        gpu=not args.no_gpu, gpu_steps=[s for s in args.gpu_steps.split(",") if s] or None,
        accelerator_type=args.accelerator_type, accelerator_limit=args.accelerator_limit, node_selector=selector,
        tolerations=args.toleration, cpu_request=args.cpu_request, cpu_limit=args.cpu_limit,
        memory_request=args.memory_request, memory_limit=args.memory_limit, image=image or settings.runtime_image(),
        gpu_image=args.gpu_image, s3_secret=args.s3_secret, mlflow_secret=args.mlflow_secret,
        config_map=args.config_map, kfp_mlflow=args.kfp_mlflow, run_as_user=args.run_as_user,
        image_pull_secrets=args.image_pull_secret, cache=not args.no_cache,
    )
    out = Path(args.output)
    paths = []
    for name in names:
        path = out if out.suffix in (".yaml", ".yml") else out / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        pipeline = build(name, placement, getattr(args, "eval_shards", 1))
        if args.kubernetes_manifests:
            compiler.Compiler().compile(pipeline, str(path), kubernetes_manifest_format=True,
                                        kubernetes_manifest_options=_manifest_options(args, pipeline.name))
        else:
            compiler.Compiler().compile(pipeline, str(path))
        paths.append(path)
    return paths


def _manifest_options(args, pipeline_name: str):
    """Pipeline and PipelineVersion resource names: KFP's webhook refuses to change a version's
    spec, so every build gets a version of its own (Kubernetes names: lowercase, digits, '-')."""
    import re
    import time

    from kfp.compiler.compiler_utils import KubernetesManifestOptions

    version = args.version_name or f"{pipeline_name}-{__version__}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
    version = re.sub(r"[^a-z0-9-]+", "-", version.lower()).strip("-")
    return KubernetesManifestOptions(pipeline_name=pipeline_name, pipeline_version_name=version,
                                     namespace=args.namespace or None, include_pipeline_manifest=True)

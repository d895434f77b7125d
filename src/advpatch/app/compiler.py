"""``advpatch compile``: each pipeline built with a cluster placement, compiled to YAML."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from advpatch import __version__, params, settings


def add_arguments(comp: argparse.ArgumentParser) -> None:
    from advpatch.app.placement import CONFIG_MAP_DEFAULT, S3_SECRET_DEFAULT

    comp.add_argument("pipelines", nargs="*", help=f"names (default: all of {', '.join(params.PIPELINE_PARAMS)})")
    comp.add_argument("--output", default="outputs/compiled", help="a folder (one <name>.yaml each) or a .yaml file")
    comp.add_argument("--no-gpu", action="store_true", help="place no step on a GPU")
    comp.add_argument("--gpu-steps", default="", help="comma-separated component names "
                      "(default: train,gen_patch,deploy_patch,infer)")
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
    comp.add_argument("--s3-secret", default=S3_SECRET_DEFAULT,
                      help="Kubernetes secret with accesskey/secretkey ('' for none)")
    comp.add_argument("--config-map", default=CONFIG_MAP_DEFAULT,
                      help="ConfigMap with MLFLOW_TRACKING_URI and the S3 endpoint ('' for none)")


def compile_pipelines(args) -> List[Path]:
    """Compile the pipelines ``args`` names (all by default) with the placement its options describe."""
    from kfp import compiler

    from advpatch.app.placement import cluster
    from advpatch.pipelines import BUILDERS

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
        gpu_image=args.gpu_image, s3_secret=args.s3_secret, config_map=args.config_map,
    )
    out = Path(args.output)
    paths = []
    for name in names:
        path = out if out.suffix in (".yaml", ".yml") else out / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(BUILDERS[name](placement), str(path))
        paths.append(path)
    return paths

"""Where and how each step runs on a cluster, chosen when a pipeline is compiled.

A :class:`Placement` is applied to every task as a pipeline is built (``placement.apply(task,
"train")``). The local runner ignores all of it; the compiled YAML carries it:

* resources and accelerators go into ``deploymentSpec`` (KFP's own fields);
* node selectors, tolerations, the security context, image pull secrets, and secrets and
  ConfigMaps as environment variables go into the Kubernetes platform spec (the second YAML
  document), through ``kfp-kubernetes``.

Credentials never appear in a compiled pipeline: S3 keys come from a Kubernetes secret
(``mlpipeline-minio-artifact`` by default, the name KFP itself uses), MLflow's basic-auth
credentials from another (``advpatch-mlflow-credentials``), the MLflow tracking URI and the S3
endpoint from a ConfigMap.

Every task runs as the images' non-root user (UID/GID 1000) with ``runAsNonRoot``: KFP 2.16+
hardens its own containers but leaves ``runAsNonRoot`` off the user container, so a namespace that
enforces the "restricted" pod-security profile rejects the pod without it. By default only the
steps that train, optimize or run a large pretrained model get a GPU (:data:`GPU_STEPS_DEFAULT`):
``infer``, ``deploy_patch`` and the preprocessing defences are light on the small images of the
demos (``--gpu-steps`` adds ``infer`` for ImageNet-sized work).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Tuple

from advpatch import params, settings
from advpatch.components import placed_on_gpu

GPU_STEPS_DEFAULT = placed_on_gpu()
"""The components whose ``metadata.yaml`` says ``gpu: true``."""
STEP_NAMES = frozenset(params.STEP_PARAMS)
RUN_AS = 1000
"""The images' non-root user and group (images/Dockerfile.*)."""

S3_SECRET_DEFAULT = "mlpipeline-minio-artifact"
S3_SECRET_KEYS = {"accesskey": settings.ENV_S3_ACCESS_KEY, "secretkey": settings.ENV_S3_SECRET_KEY}
"""Keys of KFP's artifact-store secret -> the environment variables the minio and MLflow clients read."""

MLFLOW_SECRET_DEFAULT = "advpatch-mlflow-credentials"
MLFLOW_SECRET_KEYS = {"username": settings.ENV_MLFLOW_USERNAME, "password": settings.ENV_MLFLOW_PASSWORD}
"""Keys of the MLflow basic-auth secret (manifests/templates/mlflow-credentials-secret.yaml) -> the
environment variables MLflow's client reads."""

CONFIG_MAP_DEFAULT = "advpatch-config"
CONFIG_MAP_KEYS = {name: name for name in (settings.ENV_TRACKING_URI, settings.ENV_MLFLOW_S3_ENDPOINT,
                                           settings.ENV_S3_ENDPOINT, settings.ENV_EXPERIMENT)}
"""Keys of the ConfigMap (manifests/base/configmap.yaml) -> environment variables (the same names).
With KFP's MLflow integration KFP sets ``MLFLOW_TRACKING_URI`` (and the credentials) itself, so the
pipeline then maps neither."""


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: str = "Exists"
    value: Optional[str] = None
    effect: Optional[str] = "NoSchedule"

    @classmethod
    def parse(cls, text: str) -> "Toleration":
        """``key[=value][:effect]``, e.g. ``nvidia.com/gpu:NoSchedule`` or ``pool=gpu:NoExecute``."""
        body, _, effect = text.partition(":")
        key, eq, value = body.partition("=")
        if not key or effect not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise params.ParameterError(
                f"toleration must look like key[=value][:NoSchedule|PreferNoSchedule|NoExecute], got {text!r}")
        return cls(key, "Equal" if eq else "Exists", value if eq else None, effect or None)


@dataclass(frozen=True)
class Placement:
    """Compile-time settings for every task of a pipeline. The default places nothing."""

    gpu_steps: FrozenSet[str] = frozenset()
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: int = 1
    node_selector: Tuple[Tuple[str, str], ...] = ()
    tolerations: Tuple[Toleration, ...] = ()
    cpu_request: str = ""
    cpu_limit: str = ""
    memory_request: str = ""
    memory_limit: str = ""
    image: str = ""
    gpu_image: str = ""
    s3_secret: str = ""
    mlflow_secret: str = ""
    config_map: str = ""
    kfp_mlflow: bool = False
    run_as_user: Optional[int] = None
    image_pull_secrets: Tuple[str, ...] = ()
    cache: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.gpu_steps) - STEP_NAMES
        if unknown:
            raise params.ParameterError(f"gpu steps must be among {', '.join(sorted(STEP_NAMES))}, "
                                        f"got {sorted(unknown)}")
        if self.accelerator_limit < 1:
            raise params.ParameterError(f"accelerator_limit must be an integer >= 1, got {self.accelerator_limit}")

    def apply(self, task, step: str):
        """Apply to one task (``step`` is its component name); returns the task."""
        from kfp import kubernetes

        on_gpu = step in self.gpu_steps
        image = (self.gpu_image or self.image) if on_gpu else self.image
        if image:
            task.set_container_image(image)
        if self.cpu_request:
            task.set_cpu_request(self.cpu_request)
        if self.cpu_limit:
            task.set_cpu_limit(self.cpu_limit)
        if self.memory_request:
            task.set_memory_request(self.memory_request)
        if self.memory_limit:
            task.set_memory_limit(self.memory_limit)
        if on_gpu:
            task.set_accelerator_type(self.accelerator_type)
            task.set_accelerator_limit(self.accelerator_limit)
            for key, value in self.node_selector:
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            for t in self.tolerations:
                kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)
        if self.s3_secret:
            kubernetes.use_secret_as_env(task, secret_name=self.s3_secret, secret_key_to_env=dict(S3_SECRET_KEYS))
        if self.mlflow_secret and not self.kfp_mlflow:
            kubernetes.use_secret_as_env(task, secret_name=self.mlflow_secret,
                                         secret_key_to_env=dict(MLFLOW_SECRET_KEYS))
        if self.kfp_mlflow:
            task.set_env_variable(settings.ENV_KFP_MLFLOW, "true")
        if self.config_map:
            keys = {k: v for k, v in CONFIG_MAP_KEYS.items()
                    if not (self.kfp_mlflow and v == settings.ENV_TRACKING_URI)}
            kubernetes.use_config_map_as_env(task, config_map_name=self.config_map, config_map_key_to_env=keys)
        if self.run_as_user is not None:
            kubernetes.set_security_context(task, run_as_user=self.run_as_user, run_as_group=self.run_as_user,
                                            run_as_non_root=self.run_as_user != 0)
        if self.image_pull_secrets:
            kubernetes.set_image_pull_secrets(task, list(self.image_pull_secrets))
        if not self.cache:
            task.set_caching_options(False)
        return task


def gpu_variant(image: str) -> str:
    """The GPU image beside ``image``: its tag with ``-gpu`` appended (``make images`` builds both)."""
    name, _, tag = image.rpartition(":")
    if "@" in image or not name or "/" in tag:
        raise params.ParameterError(f"cannot derive the GPU image from {image!r} (pinned by digest, or no tag): "
                                    "give --gpu-image too, or --no-gpu")
    return f"{image}-gpu"


def cluster(
    *,
    gpu: bool = True,
    gpu_steps: Optional[List[str]] = None,
    accelerator_type: str = "nvidia.com/gpu",
    accelerator_limit: int = 1,
    node_selector: Optional[Dict[str, str]] = None,
    tolerations: Optional[List[str]] = None,
    cpu_request: str = "1",
    cpu_limit: str = "4",
    memory_request: str = "2Gi",
    memory_limit: str = "8Gi",
    image: str = "",
    gpu_image: str = "",
    s3_secret: str = S3_SECRET_DEFAULT,
    mlflow_secret: str = MLFLOW_SECRET_DEFAULT,
    config_map: str = CONFIG_MAP_DEFAULT,
    kfp_mlflow: bool = False,
    run_as_user: Optional[int] = RUN_AS,
    image_pull_secrets: Optional[List[str]] = None,
    cache: bool = True,
) -> Placement:
    """A placement for a real cluster: the defaults put train and gen_patch on nodes with an NVIDIA
    GPU (selector ``nvidia.com/gpu.present=true``, the label NVIDIA's GPU operator sets, and a
    toleration for ``nvidia.com/gpu`` taints; an empty ``node_selector`` sets none). GPU steps run
    ``gpu_image``, by default ``image`` with ``-gpu`` appended to its tag. Every step runs as
    ``run_as_user`` (non-root)."""
    steps = frozenset(gpu_steps if gpu_steps is not None else GPU_STEPS_DEFAULT) if gpu else frozenset()
    selector = node_selector if node_selector is not None else {"nvidia.com/gpu.present": "true"}
    tols = tolerations if tolerations is not None else ["nvidia.com/gpu:NoSchedule"]
    return Placement(
        gpu_steps=steps, accelerator_type=accelerator_type, accelerator_limit=accelerator_limit,
        node_selector=tuple(sorted(selector.items())), tolerations=tuple(Toleration.parse(t) for t in tols),
        cpu_request=cpu_request, cpu_limit=cpu_limit, memory_request=memory_request, memory_limit=memory_limit,
        image=image, gpu_image=gpu_image or (gpu_variant(image) if image and steps else ""),
        s3_secret=s3_secret, mlflow_secret=mlflow_secret, config_map=config_map, kfp_mlflow=kfp_mlflow,
        run_as_user=run_as_user, image_pull_secrets=tuple(image_pull_secrets or ()), cache=cache,
    )

"""What gen_patch and deploy_patch share: the classifier an attack runs against."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Union

if TYPE_CHECKING:
    from advpatch.data.dataset import Dataset
    from advpatch.models.classifier import Classifier
    from advpatch.patches import Search
    from advpatch.steps._params import DeployPatchParams, GenPatchParams

def attacked_classifier(p: Union[GenPatchParams, DeployPatchParams], model: str, dataset: Dataset) -> Classifier:
    """The model (a Model artifact folder ``model`` or ``p.model_uri``), TensorFlow seeded from
    ``p.seed``, with ``p.defence`` in front when it is not 'none' (an adaptive attacker)."""
    from advpatch.models import resolve, training
    from advpatch.models.classifier import Classifier

    training.seed_everything(p.seed)
    net, info = resolve(model, p.model_uri, dataset.image_shape, len(dataset.class_names), p.model_architecture)
    classifier = Classifier(net, info)
    if p.defence != "none":
        from advpatch.defences.preprocessing import from_params

        classifier = classifier.with_transforms(from_params(p.defence, p.all()))
    return classifier


def check_placement(p: DeployPatchParams, model: str, dataset: Dataset) -> bool:
    """deploy_patch's placement against its model inputs, before any work: whether the placement is
    the worst case (which needs a model; random placement takes none)."""
    from advpatch.models import precheck
    from advpatch.params import require

    worst = p.patch_placement == "worst_case"
    require(worst or not (model or p.model_uri), "a model is used only by patch_placement='worst_case': give "
                                                 "patch_placement='worst_case' or no model")
    require(not worst or bool(model or p.model_uri), "patch_placement='worst_case' searches each image's placement "
            "against a model: give the model input (a Model artifact) or model_uri")
    if worst:
        precheck(model, p.model_uri, dataset.image_shape, len(dataset.class_names), p.model_architecture)
    return worst


def worst_case_search(p: DeployPatchParams, model: str, dataset: Dataset, record: Dict[str, Any]) -> Search:
    """deploy_patch's worst-case search (:class:`advpatch.patches.Search`) against the attacked
    classifier; what it is goes into the provenance ``record``."""
    from advpatch.patches import Search, search_angles

    search = Search(attacked_classifier(p, model, dataset), p.worst_case_stride,
                    search_angles(p.rotation_max, p.worst_case_angles))
    record.update({k: getattr(p, k) for k in ("patch_placement", "worst_case_stride", "defence")},
                  model=p.model_uri or model, worst_case_angles=[float(a) for a in search.angles])
    return search

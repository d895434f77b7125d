"""Certified defences as the pipelines run them: each a classifier built around a model whose
predictions come with certificates against any patch up to a size (:mod:`.smoothing`'s derandomized
smoothing, :mod:`.patchcleanser`'s double masking). The component trains or wraps the model,
certifies every test image and evaluates the patched copies of the test split itself (its row of
the comparison table). No adaptive attacker is run against them: the certificate bounds every
attacker of the patch size it names (docs/defences.md).

The pipeline parameters that set them (``ablation``, ``certified_architecture``,
``smoothing_learning_rate``, ``certified_lr_decay``, ``masked_training_epochs``) are
``mnist-defences``' (the parameter table's ``_PIPE_CERTIFIED``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Dict, Mapping

from advpatch.defences.base import ModelDefence

if TYPE_CHECKING:
    from advpatch.models.classifier import CertifiedPredictor, Classifier


class CertifiedDefence(ModelDefence):
    """A certified defence, trained and evaluated by its own component."""

    kind = "certified"


class DerandomizedSmoothing(CertifiedDefence):
    """Derandomized smoothing (Levine and Feizi 2020): a base classifier trained on ablated views,
    the majority vote over every view, certified by the vote margin."""

    name = "derandomized_smoothing"
    label = "derandomized smoothing (certified)"
    summary = "Derandomized smoothing (Levine and Feizi 2020), certified"
    component = "derandomized_smoothing"
    display = "derandomized smoothing: train, certify"
    rank = 1
    inputs: ClassVar[Mapping[str, str]] = {"training_data": "training_data", "testing_data": "patched_test_data"}

    @classmethod
    def classifier(cls, model: Classifier, values: Mapping[str, Any]) -> CertifiedPredictor:
        """The smoothed classifier around the base classifier ``model`` (the step's ``model`` output)."""
        from advpatch.defences.smoothing import SmoothedClassifier

        return SmoothedClassifier(model.model, model.class_names, values["ablation"], values["ablation_size"],
                                  values["vote_threshold"])

    @classmethod
    def arguments(cls, values: Mapping[str, Any]) -> Dict[str, Any]:
        return {"ablation": values["ablation"], "model_architecture": values["certified_architecture"],
                "learning_rate": values["smoothing_learning_rate"], "lr_decay": values["certified_lr_decay"],
                "seed": values["seed"]}


class PatchCleanser(CertifiedDefence):
    """PatchCleanser's double masking (Xiang et al. 2022) around the baseline model as it is."""

    name = "patch_cleanser"
    label = "PatchCleanser, no masked training (certified)"
    summary = "PatchCleanser's double masking (Xiang et al. 2022) around the baseline model, certified"
    component = "patch_cleanser"
    display = "PatchCleanser: no masked training, certify"
    rank = 2
    inputs: ClassVar[Mapping[str, str]] = {"model": "baseline_model", "training_data": "training_data",
                                           "testing_data": "patched_test_data"}

    @classmethod
    def classifier(cls, model: Classifier, values: Mapping[str, Any]) -> CertifiedPredictor:
        """Double masking around ``model`` (the step's ``defended_model`` output)."""
        from advpatch.defences.patchcleanser import PatchCleanserClassifier

        return PatchCleanserClassifier(model.model, model.class_names, values["mask_patch_size"],
                                       values["masks_per_side"])

    @classmethod
    def arguments(cls, values: Mapping[str, Any]) -> Dict[str, Any]:
        return {"seed": values["seed"]}


class MaskedPatchCleanser(PatchCleanser):
    """PatchCleanser around a fresh ``certified_architecture`` network trained under masks (the
    paper's masked training, ``masked_training_epochs``)."""

    name = "patch_cleanser_masked"
    label = "PatchCleanser, masked training (certified)"
    summary = "PatchCleanser's double masking around a network trained under its masks, certified"
    display = "PatchCleanser: masked training, certify"
    rank = 3

    @classmethod
    def arguments(cls, values: Mapping[str, Any]) -> Dict[str, Any]:
        return {"masked_training_epochs": values["masked_training_epochs"], "lr_decay": values["certified_lr_decay"],
                "masked_training_architecture": values["certified_architecture"], "seed": values["seed"]}

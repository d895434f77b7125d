"""Training defences: the model itself is hardened, so the defended classifier is that model, with
nothing in front of it (an adaptive attacker makes its patches against it).

Both run the ``train`` component with the baseline's training settings (:data:`FIT`): on the
training split with patched copies added (deploy_patch augment at ``train_patch_application_rate``),
or with PGD adversarial training (Madry et al. 2018, :func:`advpatch.models.training`). Each
evaluates its model on the test split's clean and patched images itself (``testing_data``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Dict, Mapping

from advpatch.defences.base import ModelDefence

if TYPE_CHECKING:
    from advpatch.models.classifier import Classifier

FIT = ("model_architecture", "optimizer", "epochs", "batch_size", "learning_rate", "pgd_eps", "pgd_eps_step",
       "pgd_max_iter", "seed")
"""The pipeline parameters every model ``train`` makes in a pipeline shares (the baseline's too)."""


def fit_arguments(values: Mapping[str, Any]) -> Dict[str, Any]:
    """``train``'s parameters from a pipeline's ``values``: :data:`FIT`, the model registered."""
    return {"register_model": True, **{name: values[name] for name in FIT}}


class TrainingDefence(ModelDefence):
    """A model trained to resist patches (``train``, the baseline's settings plus :attr:`extra`)."""

    kind = "training"
    component = "train"
    adaptive = True
    inputs: ClassVar[Mapping[str, str]] = {"training_data": "training_data", "testing_data": "patched_test_data"}
    model_tag: ClassVar[str] = ""
    """Its model's tag (the registered name is {experiment}_{model_tag}_{model_architecture})."""
    extra: ClassVar[Mapping[str, Any]] = {}
    """``train``'s parameters beyond the baseline's."""

    @classmethod
    def arguments(cls, values: Mapping[str, Any]) -> Dict[str, Any]:
        return {**fit_arguments(values), "model_tag": cls.model_tag, **cls.extra}

    @classmethod
    def classifier(cls, model: Classifier, values: Mapping[str, Any]) -> Classifier:
        """The hardened model itself: the defence is in its weights."""
        return model


class PatchedDataTraining(TrainingDefence):
    """The training split with a patched copy of a share of its images added (deploy_patch augment
    with the baseline's patches): the seed's adversarial training on patched data."""

    name = "patched_data"
    label = "trained on patched data"
    summary = "Train on the training split with patched copies added (the baseline's patches)"
    display = "train: on patched data"
    rank = 1
    inputs: ClassVar[Mapping[str, str]] = {"training_data": "patched_training_data",
                                           "testing_data": "patched_test_data"}
    model_tag = "patched"


class PgdTraining(TrainingDefence):
    """PGD adversarial training (Madry et al. 2018): each training batch partly replaced by its PGD
    examples (``pgd_eps``, ``pgd_eps_step``, ``pgd_max_iter``)."""

    name = "pgd"
    label = "PGD adversarial training"
    summary = "PGD adversarial training (Madry et al. 2018)"
    display = "train: PGD adversarial training"
    rank = 2
    model_tag = "pgd"
    extra: ClassVar[Mapping[str, Any]] = {"apply_defense": True}

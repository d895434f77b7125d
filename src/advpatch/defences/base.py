"""What every defence is: one self-describing object, found without a list.

A defence says its ``kind``, its ``name``, its ``label`` (its row in a comparison table), what it
does (``summary``) and the component that runs it, and gives the defended classifier behind the
classifier interface (:meth:`Defence.classifier`, a :class:`~advpatch.models.classifier.Predictor`:
float images -> class probabilities and labels). Three kinds:

* ``preprocessing`` (:mod:`.preprocessing`, :mod:`.feature_squeezing`): a
  :class:`~advpatch.models.classifier.Transform` in front of the model. Its own step runs it on a
  dataset; an adaptive attacker optimizes through it (gen_patch ``defence``).
* ``training`` (:mod:`.training`): a way of training the model (on patched data, PGD adversarial
  training). The defended classifier is the hardened model itself, so an adaptive attacker attacks
  that model, with no transform in front.
* ``certified`` (:mod:`.certified`): a classifier built around a model (derandomized smoothing's
  votes over ablated views, PatchCleanser's double masking) whose predictions come with
  certificates (a :class:`~advpatch.models.classifier.CertifiedPredictor`, which also
  certifies); its component trains or wraps the model, certifies every test image and evaluates
  the patched copies itself, through that classifier.

:func:`registered` imports every module of :mod:`advpatch.defences` and finds each kind's classes,
so the steps, the components, the pipelines, the report and the adaptive attacks need no list of
them: a new defence is its class (in a module of its own here), its parameters' entry in the
parameter table, and its tests. A training or certified defence is a :class:`ModelDefence`: which
artifacts its component takes (:attr:`~ModelDefence.inputs`, by :data:`ROLES`) and which of a
pipeline's parameters set it (:meth:`~ModelDefence.arguments`); the pipelines call its component
with those, in :attr:`~ModelDefence.rank` order.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Mapping, Type

if TYPE_CHECKING:
    from advpatch.models import ModelInfo
    from advpatch.models.classifier import Classifier, Predictor

KINDS = ("preprocessing", "training", "certified")

ROLES = {
    "training_data": "the training split (a load_dataset output)",
    "patched_training_data": "the training split with patched copies (deploy_patch augment)",
    "patched_test_data": "the test split, each image and a patched copy of it (deploy_patch augment)",
    "baseline_model": "the baseline model (the model every other row is compared with)",
}
"""The artifacts a pipeline hands a model defence's component, by role."""


class Defence:
    """A defence: what it is, in which table row it shows, and which component runs it."""

    kind: ClassVar[str] = ""
    """One of :data:`KINDS`."""
    name: ClassVar[str] = "defence"
    """Its identifier (a preprocessing defence's step and component share it)."""
    label: ClassVar[str] = "defence"
    """Its row in a comparison table."""
    summary: ClassVar[str] = ""
    """What it does, in a line."""
    component: ClassVar[str] = ""
    """The component that runs it (a preprocessing defence's own)."""
    rank: ClassVar[int] = 0
    """Its place among its kind's rows (preprocessing defences follow the parameter table)."""

    @classmethod
    def classifier(cls, model: Classifier, values: Mapping[str, Any]) -> Predictor:
        """The defended classifier (:class:`~advpatch.models.classifier.Predictor`; a certified
        defence's is a :class:`~advpatch.models.classifier.CertifiedPredictor`): ``model`` is the
        classifier of the model it defends (preprocessing) or of the model its component made
        (training: the hardened model; certified: the base classifier it wraps); ``values`` its
        parameters by their names in the parameter table."""
        raise NotImplementedError


class ModelDefence(Defence):
    """A defence that makes or wraps the model (``training``, ``certified``): its pipeline task is
    :attr:`component` called with the artifacts :attr:`inputs` names and :meth:`arguments`."""

    display: ClassVar[str] = ""
    """Its task's display name in a pipeline."""
    inputs: ClassVar[Mapping[str, str]] = {}
    """Its component's artifact inputs, each given the artifact of a role in :data:`ROLES`."""
    adaptive: ClassVar[bool] = False
    """Whether an adaptive attacker faces it (``mnist-defences``): patches made against its model."""

    @classmethod
    def arguments(cls, values: Mapping[str, Any]) -> Dict[str, Any]:
        """Its component's parameters, from a pipeline's parameters ``values`` (by their names)."""
        raise NotImplementedError


def registered(kind: str) -> Dict[str, Type[Defence]]:
    """Every defence of ``kind``, by name, in :attr:`~Defence.rank` order; each module of
    :mod:`advpatch.defences` is imported first, so a defence in a module of its
    own is found. A class that sets no ``name`` of its own is a base, not a defence."""
    import advpatch.defences as package

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    found: Dict[str, Type[Defence]] = {}
    todo = list(Defence.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.kind == kind and "name" in vars(cls):
            if cls.name in found and found[cls.name] is not cls:
                raise TypeError(f"two {kind} defences are named {cls.name!r}: {found[cls.name]} and {cls}")
            found[cls.name] = cls
    return dict(sorted(found.items(), key=lambda item: (item[1].rank, item[0])))


def defended_classifier(model: Any, info: ModelInfo) -> Predictor:
    """The classifier a model artifact stands for: a certified defence's model (its ``model.json``
    names the defence: :attr:`~advpatch.models.ModelInfo.defence`) as that defence's classifier
    around it, any other model as itself."""
    from advpatch.errors import ModelError
    from advpatch.models.classifier import Classifier

    plain = Classifier(model, info)
    if not info.defence:
        return plain
    found = registered("certified")
    name = info.defence["name"]
    if name not in found:
        raise ModelError(f"the model is certified defence {name!r}'s, which this advpatch does not have "
                         f"(it has {', '.join(found)})")
    return found[name].classifier(plain, info.defence["settings"])


def model_defences(kind: str) -> Dict[str, Type[ModelDefence]]:
    """Every ``training`` or ``certified`` defence, by name, in :attr:`~Defence.rank` order."""
    if kind not in ("training", "certified"):
        raise ValueError(f"kind must be 'training' or 'certified', got {kind!r}")
    found = registered(kind)
    wrong = sorted(name for name, cls in found.items() if not issubclass(cls, ModelDefence))
    if wrong:
        raise TypeError(f"{kind} defences must be ModelDefence classes: {wrong}")
    return {name: cls for name, cls in found.items() if issubclass(cls, ModelDefence)}

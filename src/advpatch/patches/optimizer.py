"""Patch generation: targeted patches (Brown et al., 2017) by expectation over transformation.

:func:`generate_patch` optimizes one patch with Adam against a
:class:`~advpatch.models.classifier.Classifier` (so a defence in front of the model is in the loop);
every step (overlay, model, loss, gradient, update) of the whole run is one compiled TensorFlow
loop. :func:`generate_patch_set` draws targets and generation images, runs it per patch and scores
each patch at fresh placements.

Why the objective and schedule (README, "Patch attacks", has the measurements): the gradient of the
warp (TensorFlow's, which ART uses too) has no area factor, so a placement at scale ``s`` pulls on
the patch with weight ~``1/s**2``, and under plain mean cross-entropy the small placements, most of
which cannot succeed, drown out the large ones. ``-log mean(p_target)`` (the log of the expected
targeted success) sends gradient to the placements that can succeed; at random positions it is
added to the cross-entropy, which keeps the small-scale (erasing) pressure ART's objective has.
The learning rate decays at the end so the patch settles.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

import numpy as np

from advpatch import params
from advpatch.patches.geometry import Tensor, inverse_transforms, make_mask, sample_placements, transforms, warp
from advpatch.patches.patchset import PatchSet

if TYPE_CHECKING:
    from advpatch.models.classifier import Classifier
    from advpatch.patches.conditioned import Conditioning

log = logging.getLogger(__name__)


def overlay(images: Tensor, canvases: Tensor, transform_rows: Tensor) -> Tensor:
    """Patched images: ``images`` [B, H, W, C] float in [0, 1]; ``canvases`` [B or 1, P, P, C + 1]
    (patch channels, then the mask); ``transform_rows`` [B, 8] from :func:`transforms`.

    One batched warp of patch and mask together; pixels the warped mask does not cover keep their
    exact value.
    """
    import tensorflow as tf

    channels = images.shape[-1]
    if canvases.shape[0] == 1:
        canvases = tf.broadcast_to(canvases, tf.concat([tf.shape(images)[:1], tf.shape(canvases)[1:]], 0))
    warped = warp(canvases, transform_rows, tf.shape(images)[1:3])
    patch, mask = warped[..., :channels], warped[..., channels:]
    return images + mask * (patch - images)


def overlay_for_training(images: Tensor, patch: Tensor, mask: Tensor, transform_rows: Tensor, inverse_rows: Tensor
                         ) -> Tensor:
    """:func:`overlay` of one patch ([P, P, C], mask [P, P, 1]) with a lean gradient w.r.t. the patch.

    The mask is warped on its own: it does not depend on the patch, so TensorFlow can compute it
    beside the model rather than in the chain of dependent steps. TensorFlow's own gradient of the
    warp inverts each 3x3 transform in the graph and warps back every channel; here the inverses
    come precomputed (:func:`inverse_transforms`) and only ``dL/dout * mask`` is warped back. Same
    gradient (tests check it), about a third less time per step.
    """
    import tensorflow as tf

    batch = tf.shape(images)[:1]
    hw = tf.shape(images)[1:3]
    warped_mask = warp(tf.broadcast_to(mask[None], tf.concat([batch, tf.shape(mask)], 0)), transform_rows, hw)

    @tf.custom_gradient
    def _overlay(patch: Tensor) -> Tuple[Tensor, Callable[[Tensor], Tensor]]:
        warped = warp(tf.broadcast_to(patch[None], tf.concat([batch, tf.shape(patch)], 0)), transform_rows, hw)

        def grad(upstream: Tensor) -> Tensor:
            return tf.reduce_sum(warp(upstream * warped_mask, inverse_rows, tf.shape(patch)[:2]), axis=0)

        return images + warped_mask * (warped - images), grad

    return _overlay(patch)


LOSSES = ("combined", "cross_entropy", "success")
"""What :class:`PatchOptimizer` minimizes over a batch of patched images (``p``: the model's
probability of the target class). ``cross_entropy``: the mean of ``-log p`` (Brown et al., ART).
``success``: ``-log mean(p)``, the log of the expected targeted success, whose gradient goes to the
placements that can succeed. ``combined``: their sum. ``gen_patch``'s ``auto`` picks one from the
position distribution (:func:`resolve_loss`)."""


def resolve_loss(loss: str, location: str, conditioning: str = "none") -> str:
    """``auto`` -> ``success`` for a fixed position (``center``) or a placement-conditioned set,
    ``combined`` for a universal patch at random positions.

    At a fixed position, placements too small to flip the class have nothing to teach and only
    pull the patch away from the scales where it works: ``success`` does better at every scale.
    A conditioned set knows where it is, as a patch at a fixed position does. At random positions
    the cross-entropy term is what makes small patches hide the object, as ART's do, so
    ``combined`` keeps it (README, "Patch attacks", has the measurements)."""
    params.check(patch_loss=loss, patch_location=location, patch_conditioning=conditioning)
    if loss != "auto":
        return loss
    return "success" if location == "center" or conditioning != "none" else "combined"


def learning_rates(learning_rate: float, steps: int, decay_fraction: float) -> np.ndarray:
    """[steps] Adam learning rates: ``learning_rate`` for the first ``1 - decay_fraction`` of the
    steps, then a cosine decay to 1% of it over the rest (0: constant, as ART)."""
    frac = (np.arange(steps) + 1) / steps
    start = 1.0 - decay_fraction
    phase = np.clip((frac - start) / max(decay_fraction, 1e-12), 0.0, 1.0)
    return (learning_rate * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * phase)))).astype(np.float32)


class PatchOptimizer:
    """Optimizes patches against one :class:`~advpatch.models.classifier.Classifier` and image shape;
    reused across patches so the compiled loop is traced once."""

    def __init__(self, classifier: Classifier, image_shape: Sequence[int], patch_size: int, mask: np.ndarray,
                 learning_rate: float, *, lr_decay: float = 0.3, loss: str = "combined") -> None:
        import tensorflow as tf

        params.check(lr_decay=lr_decay)
        params.require(loss in LOSSES, f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
        # logits where the model exposes them, through any transforms in front of it
        self.net, self.from_logits = classifier.scores, classifier.from_logits
        self.image_shape = tuple(int(d) for d in image_shape)
        self.channels = self.image_shape[-1]
        self.patch_size = int(patch_size)
        self.mask_array = np.asarray(mask, np.float32)
        self.patch = tf.Variable(tf.zeros((patch_size, patch_size, self.channels)), name="patch")
        self.mask = tf.constant(self.mask_array[..., None], tf.float32)
        self._m = tf.Variable(tf.zeros_like(self.patch))
        self._v = tf.Variable(tf.zeros_like(self.patch))
        self._t = tf.Variable(0.0)  # Adam's step count
        self.learning_rate = float(learning_rate)
        self.lr_decay = float(lr_decay)
        self.loss = loss
        # Fixed signature: traced once, whatever the number of images, steps or batch size.
        signature = [
            tf.TensorSpec([None, *self.image_shape], tf.float32),
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None, 8], tf.float32),
            tf.TensorSpec([None, None, 8], tf.float32),
            tf.TensorSpec([None, None], tf.float32),
            tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([], tf.int32),
        ]
        self.run = tf.function(self._run, input_signature=signature)

    def reset(self, initial: np.ndarray) -> None:
        self.patch.assign(initial)
        self._m.assign(np.zeros_like(initial))
        self._v.assign(np.zeros_like(initial))
        self._t.assign(0.0)

    def _objective(self, out: Tensor, weights: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
        """(the weighted batch loss (see :data:`LOSSES`), its mean cross-entropy); zero-weight rows
        are padding."""
        import tensorflow as tf

        ce = tf.keras.losses.sparse_categorical_crossentropy(tf.fill(tf.shape(weights), target), out,
                                                             from_logits=self.from_logits)
        total = tf.reduce_sum(weights)
        mean_ce = tf.reduce_sum(ce * weights) / total
        if self.loss == "cross_entropy":
            return mean_ce, mean_ce
        # -log(sum_i w_i p_i / sum_i w_i), computed from log p_i = -ce_i without underflow
        log_success = tf.reduce_logsumexp(-ce + tf.math.log(weights + 1e-30)) - tf.math.log(total)
        return (-log_success if self.loss == "success" else mean_ce - log_success), mean_ce

    def _step(self, x: Tensor, rows: Tensor, inverse_rows: Tensor, weights: Tensor, rate: Tensor,
              target: Tensor) -> Tensor:
        """One Adam step on the targeted loss."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            out = self.net(overlay_for_training(x, self.patch, self.mask, rows, inverse_rows))
            loss, mean_ce = self._objective(out, weights, target)
        self._update(tape.gradient(loss, self.patch), rate)
        return mean_ce

    def _update(self, grad: Tensor, rate: Tensor) -> None:
        """One Adam update of the patch variable, then the clip to [0, 1]."""
        import tensorflow as tf

        b1, b2 = 0.9, 0.999
        self._t.assign_add(1.0)
        tf.raw_ops.ResourceApplyAdam(  # one fused op for the whole Adam update
            var=self.patch.handle, m=self._m.handle, v=self._v.handle,
            beta1_power=tf.pow(b1, self._t), beta2_power=tf.pow(b2, self._t),
            lr=rate, beta1=b1, beta2=b2, epsilon=1e-7, grad=grad)
        self.patch.assign(tf.clip_by_value(self.patch, 0.0, 1.0))

    def _run(self, x: Tensor, index: Tensor, rows: Tensor, inverse_rows: Tensor, weights: Tensor, rates: Tensor,
             target: Tensor) -> Tensor:
        """Every step in one compiled loop: step s uses images ``x[index[s]]`` at ``rows[s]`` with
        learning rate ``rates[s]``. Returns each step's mean cross-entropy."""
        import tensorflow as tf

        steps = tf.shape(index)[0]
        losses = tf.TensorArray(tf.float32, size=steps)
        for s in tf.range(steps):
            loss = self._step(tf.gather(x, index[s]), rows[s], inverse_rows[s], weights[s], rates[s], target)
            losses = losses.write(s, loss)
        return losses.stack()


def generate_patch(
    optimizer: PatchOptimizer,
    x: np.ndarray,
    target: int,
    *,
    max_iter: int,
    batch_size: int,
    rotation_max: float,
    scale_min: float,
    scale_max: float,
    location: str,
    rng: np.random.Generator,
) -> Tuple[np.ndarray, List[float]]:
    """Optimize one patch towards class ``target`` on float images ``x`` [n, H, W, C].

    ``max_iter`` passes over ``x`` in shuffled batches of ``batch_size`` (ART's meaning of an
    iteration); every image of every step gets its own placement. The whole schedule (batches and
    placements) is drawn up front from ``rng`` and the steps run in one compiled TensorFlow loop,
    so there is no Python between steps. Returns the patch and each pass's mean cross-entropy
    (whatever the optimizer's loss, so runs compare).
    """
    import tensorflow as tf

    n = len(x)
    batch = min(batch_size, n)
    per_pass = math.ceil(n / batch)
    width = per_pass * batch
    index = np.empty((max_iter, width), dtype=np.int32)
    weights = np.zeros((max_iter, width), dtype=np.float32)
    for i in range(max_iter):
        order = rng.permutation(n)
        index[i, :n], weights[i, :n] = order, 1.0
        index[i, n:] = order[: width - n]  # pad the last batch; zero weight
    hw = cast(Tuple[int, int], optimizer.image_shape[:2])
    where = sample_placements(rng, index.size, hw, rotation_max=rotation_max, scale_min=scale_min,
                              scale_max=scale_max, location=location, mask=optimizer.mask_array)
    rows = transforms(where, optimizer.patch_size, hw)
    inverse_rows = inverse_transforms(where, optimizer.patch_size, hw)
    size = optimizer.patch_size
    optimizer.reset(np.full((size, size, optimizer.channels), 0.5, np.float32))
    losses = optimizer.run(
        tf.constant(x, tf.float32),
        tf.constant(index.reshape(-1, batch)),
        tf.constant(rows.reshape(-1, batch, 8)),
        tf.constant(inverse_rows.reshape(-1, batch, 8)),
        tf.constant(weights.reshape(-1, batch)),
        tf.constant(learning_rates(optimizer.learning_rate, max_iter * per_pass, optimizer.lr_decay)),
        tf.constant(target, tf.int32),
    ).numpy()
    step_weight = weights.reshape(-1, batch).sum(axis=1)
    per_pass_loss = (losses * step_weight).reshape(max_iter, per_pass).sum(axis=1) / n
    return optimizer.patch.numpy(), [float(v) for v in per_pass_loss]


def check_target(patch_target: int, num_classes: int) -> None:
    """A patch target the model's classes have (or -1, random)."""
    params.require(patch_target < num_classes,
                   f"patch_target must be -1 (random) or a class index in [0, {num_classes - 1}], got {patch_target}")


def target_index(patch_target: int, patch_target_name: str, class_names: Sequence[str]) -> int:
    """The target class: ``patch_target_name`` when given (a class name of the data, exact or, when
    that is unique, in any case), else ``patch_target``; checked against the classes."""
    if not patch_target_name:
        check_target(patch_target, len(class_names))
        return patch_target
    if patch_target_name in class_names:
        return list(class_names).index(patch_target_name)
    folded = [i for i, c in enumerate(class_names) if c.casefold() == patch_target_name.casefold()]
    if len(folded) == 1:
        return folded[0]
    close = [c for c in class_names if patch_target_name.casefold() in c.casefold()][:5]
    raise params.ParameterError(
        f"patch_target_name {patch_target_name!r} is not a class of the data ({len(class_names)} classes"
        + (f"; similar: {', '.join(repr(c) for c in close)}" if close
           else f", e.g. {', '.join(map(repr, class_names[:5]))}")
        + ")")


def draw_targets(patch_target: int, num_patch: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Each patch's target class: ``patch_target``, or a random class per patch when it is -1."""
    check_target(patch_target, num_classes)
    return np.array([patch_target if patch_target >= 0 else int(rng.integers(num_classes)) for _ in range(num_patch)],
                    dtype=np.int32)


def generate_patch_set(
    classifier: Classifier,
    images: Any,
    labels: np.ndarray,
    targets: np.ndarray,
    *,
    num_gen_samples: int,
    patch_size: int,
    patch_shape: str,
    learning_rate: float,
    lr_decay: float,
    loss: str,
    max_iter: int,
    batch_size: int,
    placement: Dict[str, Any],
    rng: np.random.Generator,
    settings: Dict[str, Any],
    conditioning: Optional["Conditioning"] = None,
) -> Tuple[PatchSet, List[float]]:
    """One patch per target against ``classifier``, each on its own ``num_gen_samples`` images
    (uint8 ``images``, an array or a :class:`~advpatch.data.dataset.Dataset` of which only the drawn
    images are read; drawn among those whose ``labels`` are not the target), then scored on them at
    fresh placements from the same distribution. ``placement``: ``rotation_max``, ``scale_min``,
    ``scale_max``, ``location``. The patch set records ``settings`` and each patch's figures (the
    same bytes for the same seed); the seconds each patch took come back beside it.

    With ``conditioning`` (:mod:`~advpatch.patches.conditioned`), each target gets a conditioned
    set instead of a patch, with the same budget (a canvas is image-sized: ``patch_size`` is the
    image's side); ``settings["conditioning"]`` records it."""
    from advpatch.data.dataset import to_float
    from advpatch.evaluation import patch_metrics
    from advpatch.patches import conditioned

    info = classifier.info
    h, w = info.input_shape[:2]
    mask = make_mask(patch_size, patch_shape)
    if conditioning is None:
        optimizer = PatchOptimizer(classifier, info.input_shape, patch_size, mask, learning_rate, lr_decay=lr_decay,
                                   loss=loss)
    else:
        settings = {**settings, "conditioning": conditioning.to_dict()}
        optimizer = conditioned.ConditionedPatchOptimizer(classifier, info.input_shape, patch_size, mask,
                                                          learning_rate, conditioning, lr_decay=lr_decay, loss=loss)
    cells = conditioning.num_cells if conditioning else 1
    results: List[Dict[str, float]] = []
    seconds_list: List[float] = []
    patch_list = []
    for i, target in enumerate(targets):
        candidates = np.flatnonzero(labels != target)
        params.require(len(candidates) > 0, f"no generation images outside target class {target}")
        chosen = rng.choice(candidates, min(num_gen_samples, len(candidates)), replace=False)
        t0 = time.monotonic()
        drawn = images[chosen] if isinstance(images, np.ndarray) else images.take(chosen)
        generate: Callable[..., Tuple[np.ndarray, List[float]]] = (
            generate_patch if conditioning is None else conditioned.generate_conditioned_patch)
        patch, history = generate(optimizer, to_float(drawn), int(target), max_iter=max_iter,
                                  batch_size=batch_size, rng=rng, **placement)
        seconds = time.monotonic() - t0
        patch = patch if conditioning else patch[None]
        one = PatchSet(patch, np.repeat(mask[None], cells, 0), np.full(cells, target), info.class_names,
                       info.input_shape, {"conditioning": conditioning.to_dict()} if conditioning else {})
        where = sample_placements(rng, len(chosen), (h, w), mask=mask, **placement)
        patched = conditioned.apply_set(drawn, one, np.zeros(len(chosen), np.int32), where)
        predicted = classifier.predict_labels(to_float(patched))
        score = patch_metrics(labels[chosen], predicted, np.ones(len(chosen), bool), np.full(len(chosen), target))
        results.append({"target": int(target), "final_loss": history[-1], "first_loss": history[0],
                        "gen_targeted_success_rate": score["targeted_success_rate"],
                        "gen_patched_accuracy": score["accuracy_patched"], "num_gen_samples": float(len(chosen))})
        seconds_list.append(seconds)
        patch_list.append(patch)
        log.info("patch %d target %s: loss %.3f -> %.3f, success on its generation images %.3f (%.1f s)",
                 i, info.class_names[target], history[0], history[-1], score["targeted_success_rate"], seconds)
    patch_set = PatchSet(np.concatenate(patch_list), np.repeat(mask[None], len(targets) * cells, 0),
                         np.repeat(np.asarray(targets, np.int32), cells), info.class_names, info.input_shape, settings,
                         results)
    return patch_set, seconds_list

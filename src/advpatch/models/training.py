"""Training: seeded, deterministic Keras fitting on uint8 datasets."""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from advpatch import params

if TYPE_CHECKING:
    from advpatch.data.dataset import Dataset
    from advpatch.models.classifier import Classifier

log = logging.getLogger(__name__)

MEMORY_BUDGET = int(os.environ.get("ADVPATCH_MEMORY_BUDGET", str(1 << 30)))
"""Bytes of images a step holds at once: a training set larger than this streams from its shards
(``ADVPATCH_MEMORY_BUDGET`` sets it)."""


def in_memory(dataset: Dataset) -> bool:
    """Whether a Dataset's images fit :data:`MEMORY_BUDGET` (then training loads them)."""
    return len(dataset) * int(np.prod(dataset.image_shape)) <= MEMORY_BUDGET


class ShardStream:
    """Seeded training batches from a Dataset larger than memory: each epoch visits the shards in a
    fresh order, a group of them at a time (as many as fit half of :data:`MEMORY_BUDGET`), and
    shuffles the images of each group together, so a batch mixes classes even where the shards
    hold one class each. Only the examples at ``indices`` (global, sorted) are used."""

    def __init__(self, dataset: Dataset, indices: np.ndarray, batch_size: int, seed: int) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.keep = np.zeros(len(dataset), bool)
        self.keep[indices] = True
        sizes = [int(s["num_examples"]) for s in dataset.spec.shards]
        self.starts = np.concatenate([[0], np.cumsum(sizes)])[:-1].astype(np.int64)
        image_bytes = int(np.prod(dataset.image_shape))
        per_shard = max(1, max(sizes, default=1) * image_bytes)
        self.group = max(1, (MEMORY_BUDGET // 2) // per_shard)

    def __len__(self) -> int:
        return int(self.keep.sum())

    def epoch(self, k: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Epoch ``k``'s batches of (uint8 images, labels)."""
        rng = np.random.default_rng([self.seed, k])
        order = rng.permutation(len(self.starts))
        for g in range(0, len(order), self.group):
            xs: List[np.ndarray] = []
            ys: List[np.ndarray] = []
            for s in sorted(order[g:g + self.group]):
                shard = self.dataset.read_shard(int(s))
                sel = self.keep[self.starts[s]:self.starts[s] + len(shard["y"])]
                xs.append(shard["x"][sel])
                ys.append(shard["y"][sel])
            x, y = np.concatenate(xs), np.concatenate(ys)
            mix = rng.permutation(len(y))
            for b in range(0, len(mix), self.batch_size):
                idx = mix[b:b + self.batch_size]
                yield x[idx], y[idx]

    def forever(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        k = 0
        while True:
            yield from self.epoch(k)
            k += 1

    def tf_dataset(self) -> Any:
        import tensorflow as tf

        h, w, c = self.dataset.image_shape
        ds = tf.data.Dataset.from_generator(self.forever, output_signature=(
            tf.TensorSpec((None, h, w, c), tf.uint8), tf.TensorSpec((None,), tf.int32)))
        return ds.map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b)).prefetch(2)


def seed_everything(seed: int) -> None:
    """Same seed, same bytes: seed Python, NumPy and TensorFlow and make TF ops deterministic."""
    params.check(seed=seed)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def split_validation(n: int, validation_split: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Shuffled (train, validation) index arrays; the validation share is ``validation_split``."""
    params.check(validation_split=validation_split, seed=seed)
    order = np.random.default_rng(seed).permutation(n)
    n_val = math.floor(n * validation_split)
    if validation_split > 0 and n_val == 0:
        n_val = 1
    if n - n_val < 1:
        raise params.ParameterError(
            f"validation_split {validation_split} leaves no training images out of {n}"
        )
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _as_tf_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, shuffle: bool) -> Any:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b))
    return ds.prefetch(2)


def fit(
    model: Any,
    x: Any,
    y: Any,
    *,
    epochs: float,
    batch_size: int,
    optimizer: str,
    learning_rate: float,
    validation_split: float = 0.0,
    seed: int = 0,
) -> Dict[str, List[float]]:
    """Train ``model`` on uint8 images ``x`` and labels ``y``; returns the per-epoch history.

    ``epochs`` may be fractional: training runs ``round(epochs * steps_per_epoch)`` steps in
    ``ceil(epochs)`` Keras epochs of equal length. ``x`` may be a Dataset (``y`` ``None``) larger
    than memory: its shards stream through ``tf.data`` (:class:`ShardStream`).
    """
    params.check(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, optimizer=optimizer)
    from advpatch.models import make_optimizer

    train_idx, val_idx = split_validation(len(x), validation_split, seed)
    if isinstance(x, np.ndarray):
        train_ds = _as_tf_dataset(x[train_idx], y[train_idx], batch_size, seed, shuffle=True).repeat()
        val_ds = _as_tf_dataset(x[val_idx], y[val_idx], batch_size, seed, shuffle=False) if len(val_idx) else None
    else:
        log.info("streaming %d training images from %d shards (larger than the %d MB memory budget)", len(x),
                 len(x.spec.shards), MEMORY_BUDGET >> 20)
        train_ds = ShardStream(x, train_idx, batch_size, seed).tf_dataset()
        val_ds = ShardStream(x, val_idx, batch_size, seed).tf_dataset().take(
            math.ceil(len(val_idx) / batch_size)) if len(val_idx) else None

    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    keras_epochs = math.ceil(epochs)
    total_steps = max(1, round(epochs * steps_per_epoch))
    steps = steps_per_epoch if float(epochs).is_integer() else math.ceil(total_steps / keras_epochs)

    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps,  # one compiled call per epoch: the same steps, a third less time
    )
    log.info(
        "training %s on %d images (%d validation): %s epochs x %d steps of %d",
        model.name, len(train_idx), len(val_idx), epochs, steps, batch_size,
    )
    history = model.fit(
        train_ds,
        epochs=keras_epochs,
        steps_per_epoch=steps,
        validation_data=val_ds,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        verbose=0,
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _pgd(forward: Callable[[Any], Any], x: Any, y: Any, eps: float, eps_step: float, max_iter: int,
         seed: Any) -> Any:
    """Untargeted L-inf PGD (Madry et al.) with a random start, on float images in [0, 1];
    ``forward`` gives class probabilities."""
    import tensorflow as tf

    start = tf.random.stateless_uniform(tf.shape(x), seed=seed, minval=-eps, maxval=eps)
    x_adv = tf.clip_by_value(x + start, 0.0, 1.0)
    for _ in tf.range(max_iter):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = tf.reduce_sum(tf.keras.losses.sparse_categorical_crossentropy(y, forward(x_adv)))
        x_adv = x_adv + eps_step * tf.sign(tape.gradient(loss, x_adv))
        x_adv = tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)
    return tf.stop_gradient(x_adv)


def pgd_accuracy(classifier: Classifier, x: np.ndarray, y: np.ndarray, *, eps: float, eps_step: float, max_iter: int,
                 seed: int = 0, batch_size: int = 256, offset: int = 0) -> float:
    """Accuracy of a :class:`~advpatch.models.classifier.Classifier` on PGD adversarial examples of uint8
    images ``x`` (the attack goes through the classifier's transforms too). ``offset``: the index
    of ``x[0]`` in a larger set measured in parts (it seeds the random starts, so no two parts draw
    the same ones)."""
    import tensorflow as tf

    params.check(pgd_eps=eps, pgd_eps_step=eps_step, pgd_max_iter=max_iter)

    @tf.function(reduce_retracing=True)
    def correct(xb: Any, yb: Any, s: Any) -> Any:
        adv = _pgd(classifier.probabilities, xb, yb, eps, eps_step, max_iter, tf.stack([s, seed]))
        predicted = tf.argmax(classifier.probabilities(adv), -1, output_type=tf.int32)
        return tf.reduce_sum(tf.cast(predicted == yb, tf.int32))

    hits = 0
    for i in range(0, len(x), batch_size):
        xb = tf.constant(x[i:i + batch_size], tf.float32) / 255.0
        hits += int(correct(xb, tf.constant(y[i:i + batch_size], tf.int32), tf.constant(offset + i, tf.int32)))
    return hits / len(x)


def fit_adversarial(
    model: Any,
    x: Any,
    y: Any,
    *,
    epochs: float,
    batch_size: int,
    optimizer: str,
    learning_rate: float,
    pgd_eps: float,
    pgd_eps_step: float,
    pgd_max_iter: int,
    pgd_ratio: float = 0.5,
    validation_split: float = 0.0,
    seed: int = 0,
) -> Dict[str, List[float]]:
    """PGD adversarial training (Madry et al. 2018): every step trains on PGD examples of its
    batch (a ``pgd_ratio`` share of it; the rest stays clean). One compiled step per batch. ``x``
    may be a Dataset (``y`` ``None``) larger than memory, streamed as :func:`fit` streams it."""
    import tensorflow as tf

    from advpatch.models import make_optimizer

    params.check(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, optimizer=optimizer,
                 pgd_eps=pgd_eps, pgd_eps_step=pgd_eps_step, pgd_max_iter=pgd_max_iter, pgd_ratio=pgd_ratio)
    train_idx, val_idx = split_validation(len(x), validation_split, seed)
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    total = max(1, round(epochs * steps_per_epoch))
    opt = make_optimizer(optimizer, learning_rate)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()

    @tf.function(reduce_retracing=True)
    def step(xb: Any, yb: Any, s: Any) -> Any:
        n_adv = tf.cast(tf.math.ceil(pgd_ratio * tf.cast(tf.shape(xb)[0], tf.float32)), tf.int32)
        adv = _pgd(lambda a: model(a, training=False), xb[:n_adv], yb[:n_adv], pgd_eps, pgd_eps_step, pgd_max_iter,
                   tf.stack([s, seed]))
        mixed = tf.concat([adv, xb[n_adv:]], axis=0)
        with tf.GradientTape() as tape:
            probs = model(mixed, training=True)
            loss = loss_fn(yb, probs)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        hits = tf.reduce_sum(tf.cast(tf.argmax(probs, -1, output_type=tf.int32) == yb, tf.float32))
        return loss, hits

    rng = np.random.default_rng(seed)
    stream: Optional[ShardStream] = None if isinstance(x, np.ndarray) else ShardStream(x, train_idx, batch_size, seed)

    def epoch_batches(k: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        if stream is not None:
            yield from stream.epoch(k)
            return
        order = train_idx[rng.permutation(len(train_idx))]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]

    history: Dict[str, List[float]] = {"loss": [], "accuracy": []}
    done, epoch_loss, epoch_hits, epoch_n, k = 0, 0.0, 0.0, 0, 0
    log.info("PGD adversarial training %s: %d steps, eps %s, step %s, %d iterations", model.name, total,
             pgd_eps, pgd_eps_step, pgd_max_iter)
    while done < total:
        for xb, yb in epoch_batches(k):
            loss, hits = step(tf.constant(xb, tf.float32) / 255.0, tf.constant(yb, tf.int32),
                              tf.constant(done, tf.int32))
            epoch_loss += float(loss) * len(yb)
            epoch_hits += float(hits)
            epoch_n += len(yb)
            done += 1
            if done % steps_per_epoch == 0 or done == total:
                history["loss"].append(epoch_loss / epoch_n)
                history["accuracy"].append(epoch_hits / epoch_n)
                epoch_loss, epoch_hits, epoch_n = 0.0, 0.0, 0
            if done == total:
                break
        k += 1
    if len(val_idx):
        hits, n = 0, 0
        batches = ShardStream(x, val_idx, 256, seed).epoch(0) if stream is not None else (
            (x[val_idx[i:i + 256]], y[val_idx[i:i + 256]]) for i in range(0, len(val_idx), 256))
        for xb, yb in batches:
            hits += int((model.predict(xb.astype(np.float32) / 255.0, verbose=0).argmax(1) == yb).sum())
            n += len(yb)
        history["val_accuracy"] = [hits / n]
    return history

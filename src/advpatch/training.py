"""Training: seeded, deterministic Keras fitting on uint8 datasets."""

from __future__ import annotations

import logging
import math
from typing import Dict, List

import numpy as np

from advpatch import params

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Same seed, same bytes: seed Python, NumPy and TensorFlow and make TF ops deterministic."""
    params.check(seed=seed)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def split_validation(n: int, validation_split: float, seed: int):
    """Shuffled (train, validation) index arrays; the validation share is ``validation_split``."""
    params.check(validation_split=validation_split, seed=seed)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(math.floor(n * validation_split))
    if validation_split > 0 and n_val == 0:
        n_val = 1
    if n - n_val < 1:
        raise params.ParameterError(
            f"validation_split {validation_split} leaves no training images out of {n}"
        )
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _as_tf_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, shuffle: bool):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b))
    return ds.prefetch(2)


def fit(
    model,
    x: np.ndarray,
    y: np.ndarray,
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
    ``ceil(epochs)`` Keras epochs of equal length.
    """
    params.check(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, optimizer=optimizer)
    from advpatch.models import make_optimizer

    train_idx, val_idx = split_validation(len(x), validation_split, seed)
    train_ds = _as_tf_dataset(x[train_idx], y[train_idx], batch_size, seed, shuffle=True)
    val_ds = _as_tf_dataset(x[val_idx], y[val_idx], batch_size, seed, shuffle=False) if len(val_idx) else None

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
        train_ds.repeat(),
        epochs=keras_epochs,
        steps_per_epoch=steps,
        validation_data=val_ds,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        verbose=0,
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _pgd(forward, x, y, eps: float, eps_step: float, max_iter: int, seed):
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


def pgd_accuracy(classifier, x: np.ndarray, y: np.ndarray, *, eps: float, eps_step: float, max_iter: int,
                 seed: int = 0, batch_size: int = 256) -> float:
    """Accuracy of a :class:`~advpatch.classifier.Classifier` on PGD adversarial examples of uint8
    images ``x`` (the attack goes through the classifier's transforms too)."""
    import tensorflow as tf

    params.check(pgd_eps=eps, pgd_eps_step=eps_step, pgd_max_iter=max_iter)

    @tf.function(reduce_retracing=True)
    def correct(xb, yb, s):
        adv = _pgd(classifier.probabilities, xb, yb, eps, eps_step, max_iter, tf.stack([s, seed]))
        predicted = tf.argmax(classifier.probabilities(adv), -1, output_type=tf.int32)
        return tf.reduce_sum(tf.cast(predicted == yb, tf.int32))

    hits = 0
    for i in range(0, len(x), batch_size):
        xb = tf.constant(x[i:i + batch_size], tf.float32) / 255.0
        hits += int(correct(xb, tf.constant(y[i:i + batch_size], tf.int32), tf.constant(i, tf.int32)))
    return hits / len(x)


def fit_adversarial(
    model,
    x: np.ndarray,
    y: np.ndarray,
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
    batch (a ``pgd_ratio`` share of it; the rest stays clean). One compiled step per batch."""
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
    def step(xb, yb, s):
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
    history: Dict[str, List[float]] = {"loss": [], "accuracy": []}
    done, epoch_loss, epoch_hits, epoch_n = 0, 0.0, 0.0, 0
    log.info("PGD adversarial training %s: %d steps, eps %s, step %s, %d iterations", model.name, total,
             pgd_eps, pgd_eps_step, pgd_max_iter)
    while done < total:
        order = train_idx[rng.permutation(len(train_idx))]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss, hits = step(tf.constant(x[idx], tf.float32) / 255.0, tf.constant(y[idx], tf.int32),
                              tf.constant(done, tf.int32))
            epoch_loss += float(loss) * len(idx)
            epoch_hits += float(hits)
            epoch_n += len(idx)
            done += 1
            if done % steps_per_epoch == 0 or done == total:
                history["loss"].append(epoch_loss / epoch_n)
                history["accuracy"].append(epoch_hits / epoch_n)
                epoch_loss, epoch_hits, epoch_n = 0.0, 0.0, 0
            if done == total:
                break
    if len(val_idx):
        probs = model.predict(x[val_idx].astype(np.float32) / 255.0, verbose=0)
        history["val_accuracy"] = [float((probs.argmax(1) == y[val_idx]).mean())]
    return history

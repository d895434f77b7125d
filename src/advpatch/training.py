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

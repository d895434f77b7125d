"""The MNIST experiment: load -> train LeNet -> evaluate -> report.

Runs on the embedded digits by default (``data_dir='digits'``) or on an MNIST laid out as in the
seed demo (``training/`` and ``testing/`` folders of class subfolders of PNGs).
"""

from kfp import dsl
from kfp.dsl import Artifact

from advpatch.components import infer, load_dataset, report, train
from advpatch.pipelines.common import report_inputs, tracking


@dsl.pipeline(
    name="advpatch-mnist-patch",
    description="Train LeNet-5 on MNIST (or the embedded digits) and evaluate it; one results table.",
)
def mnist_patch(
    data_dir: str = "digits",
    image_size: int = 28,
    model_architecture: str = "le_net",
    optimizer: str = "adam",
    epochs: float = 15.0,
    batch_size: int = 32,
    learning_rate: float = 0.002,
    validation_split: float = 0.0,
    model_tag: str = "",
    register_model: bool = True,
    seed: int = 0,
    experiment_name: str = "mnist",
) -> Artifact:
    track = tracking(experiment_name)
    train_data = load_dataset(source=data_dir, split="train", image_size=image_size, color_mode="grayscale",
                              seed=seed, **track).set_display_name("load training data")
    test_data = load_dataset(source=data_dir, split="test", image_size=image_size, color_mode="grayscale",
                             seed=seed, **track).set_display_name("load test data")
    trained = train(
        training_data=train_data.outputs["dataset"], testing_data=test_data.outputs["dataset"],
        model_architecture=model_architecture, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, validation_split=validation_split, model_tag=model_tag,
        register_model=register_model, seed=seed, **track,
    )
    clean = infer(
        data=test_data.outputs["dataset"], model=trained.outputs["model"], model_architecture=model_architecture,
        label="baseline / clean test", seed=seed, **track,
    ).set_display_name("infer: clean test")
    summary = report(
        **report_inputs(trained, clean),
        title="MNIST adversarial patch experiment", **track,
    )
    return summary.outputs["results"]

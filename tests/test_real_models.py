"""Real models and real layouts: init_model (Keras' ImageNet weights from a file, a path or s3://),
import_model (a user's .keras file), class index files, the ImageNet, Fruits360 and custom-model
pipelines end to end through kfp.local on small folders in their real layouts, and compiled for a
cluster. Nothing is downloaded: the weights are saved from a randomly initialised ResNet50."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from advpatch import settings
from advpatch.defences.base import model_defences
from advpatch.defences.preprocessing import registered
from advpatch.errors import AdvpatchError

TOASTER = 859
WNIDS = ["n01440764", "n02102040", "n04442312", "n03000684"]
"""The sub-folders of the generated ImageNet validation folder (the third is the toaster's)."""
FRUITS = ["Apple Braeburn", "Banana", "Cherry 1"]


@pytest.fixture(scope="session")
def class_index(tmp_path_factory) -> Path:
    """A file in Keras' imagenet_class_index.json format: 1,000 classes, 859 the toaster."""
    index = {str(i): [f"n{i + 1000000:08d}", f"class {i}"] for i in range(1000)}
    for i, wnid in zip((0, 215, TOASTER, 491), WNIDS):
        index[str(i)] = [wnid, {0: "tench", 215: "Brittany spaniel", TOASTER: "toaster", 491: "chain saw"}[i]]
    path = tmp_path_factory.mktemp("keras") / "imagenet_class_index.json"
    path.write_text(json.dumps(index))
    return path


@pytest.fixture(scope="session")
def imagenet_val(tmp_path_factory) -> Path:
    """ImageNet's validation layout: class sub-folders named by WordNet id, JPEGs of varied sizes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet") / "val"
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(WNIDS):
        (root / wnid).mkdir(parents=True)
        for k in range(10):
            size = (int(rng.integers(60, 90)), int(rng.integers(60, 90)))
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / wnid / f"ILSVRC2012_val_{c * 10 + k:08d}.JPEG")
    return root


@pytest.fixture(scope="session")
def fruits_folder(tmp_path_factory) -> Path:
    """Fruits360 as Kaggle lays it out: Training/ and Test/, class names with spaces, 100x100 JPEGs
    of one fruit-coloured disc on white."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fruits-360")
    rng = np.random.default_rng(1)
    colours = np.array([[200, 30, 30], [230, 220, 40], [60, 0, 90]])
    yy, xx = np.mgrid[:100, :100]
    for split, n in (("Training", 16), ("Test", 6)):
        for c, name in enumerate(FRUITS):
            (root / split / name).mkdir(parents=True)
            for k in range(n):
                image = np.full((100, 100, 3), 255, np.uint8)
                r, (cy, cx) = rng.integers(25, 40), rng.integers(40, 60, 2)
                image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = np.clip(colours[c] + rng.integers(-20, 20, 3), 0, 255)
                Image.fromarray(image).save(root / split / name / f"{k}_100.jpg")
    return root


def _load(source, out, **kw):
    from advpatch import steps

    return steps.load_dataset(dataset=str(out), source=str(source), **kw)


# --------------------------------------------------------------------------- class folders and class indexes
def test_a_folder_without_split_folders_holds_out_a_fixed_fifth_of_every_class(imagenet_val, tmp_path, outputs):
    from advpatch.data.dataset import Dataset

    for split in ("train", "test", "all"):
        _load(imagenet_val, tmp_path / split, split=split, image_size=32)
    train, test, every = (Dataset(tmp_path / s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == (32, 8, 40)
    assert np.bincount(test.labels()).tolist() == [2, 2, 2, 2]  # stratified: 2 of each class's 10
    pixels = {s: {d.take([i])[0].tobytes() for i in range(len(d))} for s, d in
              (("train", train), ("test", test), ("all", every))}
    assert not pixels["train"] & pixels["test"] and pixels["train"] | pixels["test"] == pixels["all"]
    _load(imagenet_val, tmp_path / "again", split="test", image_size=32, seed=7)  # the split ignores the seed
    assert Dataset(tmp_path / "again").take(range(8)).tobytes() == test.take(range(8)).tobytes()


def test_a_class_index_labels_wordnet_id_folders_with_the_model_output_indices(imagenet_val, class_index, tmp_path,
                                                                               outputs):
    from advpatch.data.dataset import Dataset
    from advpatch.data.readers import SourceError

    result = _load(imagenet_val, tmp_path / "d", split="all", image_size=32, class_index=str(class_index))
    data = Dataset(tmp_path / "d")
    assert len(data.class_names) == 1000 and data.class_names[TOASTER] == "toaster"
    assert sorted(set(data.labels().tolist())) == [0, 215, 491, TOASTER]
    assert np.bincount(data.labels(), minlength=1000)[TOASTER] == 10
    assert data.spec.provenance[-1]["class_index"] == str(class_index)
    assert result.outputs["dataset"]["num_examples"] == 40
    stray = tmp_path / "stray"
    (stray / "n99999999").mkdir(parents=True)
    with pytest.raises(SourceError, match=r"'n99999999' of .* match no class in the class index"):
        _load(stray, tmp_path / "never", split="all", class_index=str(class_index))
    assert not (tmp_path / "never").exists()
    with pytest.raises(AdvpatchError, match="class_index applies to a folder of class sub-folders"):
        _load("digits", tmp_path / "never", class_index=str(class_index))


# --------------------------------------------------------------------------- init_model
@pytest.fixture(scope="module")
def imagenet_test(imagenet_val, class_index, tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet-test")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        _load(imagenet_val, root / "test", split="test", image_size=224, color_mode="rgb",
              class_index=str(class_index))
    return root / "test"


def test_init_model_from_a_weights_file(imagenet_test, resnet50_weights, tmp_path, outputs):
    """The model takes [0, 1] pixels, gives the application's own probabilities, says so in its
    manifest, is evaluated as infer evaluates and registered under the seed's name."""
    import mlflow
    from keras.applications.resnet50 import preprocess_input

    from advpatch import steps
    from advpatch.data.dataset import Dataset, to_float
    from advpatch.models import load_model
    from advpatch.tracking import RunContext

    weights, reference = resnet50_weights
    result = steps.init_model(testing_data=str(imagenet_test), model=str(tmp_path / "model"), weights=str(weights),
                              model_tag="pretrained", batch_size=4, ctx=RunContext("imagenet"))
    net, info = load_model(tmp_path / "model")
    assert (info.architecture, info.input_shape, info.logits_layer) == ("resnet50", (224, 224, 3), "predictions")
    assert info.preprocessing.startswith("imagenet caffe") and info.class_names[TOASTER] == "toaster"
    assert info.provenance["weights"] == str(weights) and info.provenance["step"] == "init_model"
    x = to_float(Dataset(imagenet_test).take([0, 1]))
    np.testing.assert_allclose(net.predict(x, verbose=0), reference.predict(preprocess_input(x * 255.0), verbose=0),
                               atol=1e-5)
    assert result.metrics["test_num_examples"] == 8 and 0 <= result.metrics["test_accuracy"] <= 1
    (evaluation,) = result.evaluations
    assert evaluation.row == "pretrained" and evaluation.condition == "clean"
    assert len(evaluation.categories) < 100  # the classes that occur, not a 1000 x 1000 matrix
    assert result.details["registered_model"] == "imagenet_pretrained_resnet50"
    version = mlflow.MlflowClient().get_model_version("imagenet_pretrained_resnet50", "1")
    assert version.run_id == result.details["mlflow_run_id"]


def test_init_model_from_s3(imagenet_val, class_index, resnet50_weights, s3_env, tmp_path, outputs):
    """Weights, class index and images from the object store (the real S3 server the tests run)."""
    from advpatch import steps
    from advpatch.data.dataset import Dataset
    from advpatch.io import storage

    _, bucket = s3_env
    weights, _ = resnet50_weights
    storage.upload(weights, f"s3://{bucket}/models/keras")  # a file goes under the prefix, by its name
    storage.upload(class_index, f"s3://{bucket}/models/keras")
    storage.upload(imagenet_val, f"s3://{bucket}/datasets/imagenet/val")
    _load(f"s3://{bucket}/datasets/imagenet/val", tmp_path / "test", split="test", image_size=224, color_mode="rgb",
          class_index=f"s3://{bucket}/models/keras/imagenet_class_index.json", max_examples=3)
    assert len(Dataset(tmp_path / "test").class_names) == 1000
    result = steps.init_model(testing_data=str(tmp_path / "test"), model=str(tmp_path / "model"), batch_size=3,
                              weights=f"s3://{bucket}/models/keras/{weights.name}", register_model=False)
    assert result.metrics["test_num_examples"] == 3 and (tmp_path / "model" / "model.keras").is_file()
    with pytest.raises(AdvpatchError, match=r"no objects under s3://.*/models/keras/vgg16"):
        steps.init_model(testing_data=str(tmp_path / "test"), model=str(tmp_path / "m2"), model_architecture="vgg16",
                         weights=f"s3://{bucket}/models/keras/vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    assert not (tmp_path / "m2").exists()


def test_init_model_refuses_bad_weights_before_any_heavy_work(imagenet_test, imagenet_val, resnet50_weights, tmp_path,
                                                              outputs):
    """Each a clear error naming the file, before TensorFlow builds anything, no artifact left."""
    from conftest import error_before_tensorflow

    weights, _ = resnet50_weights
    (tmp_path / "corrupt.h5").write_bytes(b"\x89HDF\r\n" + b"junk" * 100)
    _load(imagenet_val, tmp_path / "no-index", split="test", image_size=224, color_mode="rgb")
    cases = [
        (dict(weights=str(tmp_path / "missing.h5")), r"weights file .*missing\.h5 does not exist"),
        (dict(weights=str(weights), model_architecture="vgg16"), r"holds resnet50 weights, not vgg16's"),
        (dict(weights=str(tmp_path / "corrupt.h5")), r"corrupt\.h5 is not an HDF5 file"),
        (dict(weights=str(weights), testing_data=str(tmp_path / "no-index")),
         r"1,000 classes but the test data has 4: load it with class_index=imagenet_class_index\.json"),
        (dict(weights=str(weights), model_architecture="le_net"), r"model_architecture must be one of 'resnet50', "
                                                                  r"'vgg16', got 'le_net'"),
    ]
    for case, message in cases:
        args = {"testing_data": str(imagenet_test), "model": str(tmp_path / "model"), **case}
        out = error_before_tensorflow("init_model", args)
        import re

        assert re.search(message, out), (case, out)
        assert not (tmp_path / "model").exists()


# --------------------------------------------------------------------------- import_model
def _user_model(path: Path, classes: int = 3, size: int = 24, softmax: bool = False):
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax" if softmax else None)(x)
    model = keras.Model(inputs, outputs, name="users_net")
    model.save(path)
    return model


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A user's data (a plain class folder, three classes) and its class names file, loaded at 24x24."""
    from PIL import Image

    root = tmp_path_factory.mktemp("parts")
    rng = np.random.default_rng(2)
    for name in ["bolt", "nut", "washer"]:
        (root / "data" / name).mkdir(parents=True)
        for k in range(10):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / "data" / name / f"{k}.png")
    (root / "classes.txt").write_text("washer\nbolt\nnut\n")  # the model's order, not the folders'
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        _load(root / "data", root / "test", split="test", class_index=str(root / "classes.txt"))
    return root


def test_import_model_puts_the_preprocessing_inside_and_keeps_the_logits(parts, tmp_path, outputs):
    import keras

    from advpatch import steps
    from advpatch.data.dataset import Dataset, to_float
    from advpatch.models import load_model
    from advpatch.models.classifier import Classifier

    users = _user_model(tmp_path / "users.keras")
    result = steps.import_model(testing_data=str(parts / "test"), model=str(tmp_path / "model"),
                                model_file=str(tmp_path / "users.keras"), preprocessing="tf", model_tag="parts")
    net, info = load_model(tmp_path / "model")
    assert (info.architecture, info.class_names, info.logits_layer) == ("custom", ["washer", "bolt", "nut"], "logits")
    assert info.provenance["outputs"] == "logits" and info.preprocessing.startswith("imagenet tf")
    x = to_float(Dataset(parts / "test").take(range(6)))
    logits = users.predict(x * 2.0 - 1.0, verbose=0)
    np.testing.assert_allclose(net.predict(x, verbose=0), keras.ops.convert_to_numpy(keras.ops.softmax(logits)),
                               atol=1e-5)
    classifier = Classifier(net, info)
    assert classifier.from_logits
    np.testing.assert_allclose(keras.ops.convert_to_numpy(classifier.scores(x)), logits, atol=1e-4)
    assert result.metrics["test_num_examples"] == 6 and result.details["registered_model"] == "advpatch_parts_custom"
    # a model that ends in a softmax: probabilities as they are, no logits to offer
    _user_model(tmp_path / "probs.keras", softmax=True)
    steps.import_model(testing_data=str(parts / "test"), model=str(tmp_path / "m2"), register_model=False,
                       model_file=str(tmp_path / "probs.keras"))
    assert load_model(tmp_path / "m2")[1].logits_layer is None


def test_import_model_checks_the_file_against_the_data_first(parts, tmp_path, outputs):
    import keras

    from advpatch import steps

    _user_model(tmp_path / "five.keras", classes=5)
    _user_model(tmp_path / "big.keras", size=32)
    inputs = keras.Input((24, 24, 3))
    keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 2)(inputs)))
                ).save(tmp_path / "lambda.keras")
    (tmp_path / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    cases = [
        ("five.keras", r"five\.keras outputs \(None, 5\), but the data has 3 classes"),
        ("big.keras", r"big\.keras takes inputs \(None, 32, 32, 3\), but the data's images are 24x24x3"),
        ("lambda.keras", r"cannot load .*lambda\.keras as a Keras model: .*(unsafe|safe_mode|lambda|Lambda)"),
        ("model.h5", r"model\.h5 is not a Keras 3 \.keras archive"),
        ("missing.keras", r"model_file file .*missing\.keras does not exist"),
    ]
    for name, message in cases:
        with pytest.raises(AdvpatchError, match=message):
            steps.import_model(testing_data=str(parts / "test"), model=str(tmp_path / "model"),
                               model_file=str(tmp_path / name))
        assert not (tmp_path / "model").exists()
    with pytest.raises(AdvpatchError, match="model_file is required"):
        steps.import_model(testing_data=str(parts / "test"), model=str(tmp_path / "model"))


# --------------------------------------------------------------------------- pipelines
def _run(root: Path, name: str, arguments: dict) -> dict:
    """`advpatch run NAME -p ...` in ``root`` (its own outputs and MLflow); its results.json."""
    from advpatch.app import cli

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(settings.ENV_TRACKING_URI, raising=False)
        mp.delenv(settings.ENV_OUTPUT_DIR, raising=False)
        mp.chdir(root)
        pairs = [a for k, v in arguments.items() for a in ("-p", f"{k}={v}")]
        assert cli.main(["run", name, *pairs]) == 0
    return json.loads((root / "outputs" / "run" / "results.json").read_text())


@pytest.mark.pipeline
def test_the_imagenet_pipeline_compiled_for_a_cluster_and_run_back_locally(imagenet_val, class_index,
                                                                           resnet50_weights, tmp_path):
    """imagenet-patch compiled as for a cluster (init_model and gen_patch on a GPU), then its YAML run
    through kfp.local: a pretrained model, a patch targeting the toaster by name, four rows."""
    from kfp import components, local

    from advpatch.app import cli

    weights, _ = resnet50_weights
    out = tmp_path / "imagenet-patch.yaml"
    assert cli.main(["compile", "imagenet-patch", "--output", str(out), "--image", "registry.example/advpatch:1"]) == 0
    spec, _platform = yaml.safe_load_all(out.read_text())
    executors = spec["deploymentSpec"]["executors"]
    on_gpu = {name for name, e in executors.items() if "accelerator" in e["container"]["resources"]}
    assert {"exec-init-model", "exec-gen-patch"} <= on_gpu and not any("infer" in n for n in on_gpu)
    assert executors["exec-init-model"]["container"]["image"] == "registry.example/advpatch:1-gpu"
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["patch_target"]["defaultValue"] == TOASTER
    assert inputs["model_architecture"]["defaultValue"] == "resnet50"
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert {"init-model", "gen-patch", "deploy-patch", "report"} <= set(tasks) and "train" not in tasks

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(settings.ENV_OUTPUT_DIR, str(tmp_path / "outputs"))
        mp.setenv(settings.ENV_TRACKING_URI, f"sqlite:///{tmp_path / 'outputs' / 'mlflow' / 'mlflow.db'}")
        pipeline = components.load_component_from_file(str(out))
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "outputs" / "kfp"))
        pipeline(data_dir=str(imagenet_val), class_index=str(class_index), weights=str(weights), max_iter=2,
                 num_patch=1, num_patch_gen_samples=4, patch_target_name="toaster", batch_size=8)
    (run,) = (tmp_path / "outputs" / "kfp").iterdir()
    results = json.loads((run / "report" / "results").read_text())
    steps = {s["step"]: s for s in results["steps"]}
    assert steps["init_model"]["details"]["model_uri"].startswith("models:/imagenet_pretrained_resnet50/")
    assert steps["gen_patch"]["details"]["targets"] == ["toaster"]
    assert [r["label"] for r in results["comparison"]] == [
        "pretrained", "baseline", *[d.label for d in registered().values()]]
    patched = [e for e in results["evaluations"] if e["condition"] == "patched"]
    # the 20% held out: 2 of 10 a class
    assert len(patched) == 1 + len(registered()) and all(e["num_examples"] == 8 for e in patched)
    assert all(e["num_patched"] == 8 for e in patched)


@pytest.mark.pipeline
def test_the_fruits360_pipeline_end_to_end(fruits_folder, tmp_path):
    """The Kaggle layout (Training/, Test/, names with spaces), RGB, every row of the experiment,
    the patch target given by name; settings lowered for a CPU as the README says."""
    results = _run(tmp_path, "fruits360-experiment", {
        "data_dir": fruits_folder, "image_size": 32, "model_architecture": "le_net", "epochs": 12,
        "learning_rate": 0.003, "max_iter": 30, "pgd_max_iter": 2, "patch_target": 1})
    rows = {r["label"]: r for r in results["comparison"]}
    assert list(rows) == ["baseline", *[d.label for d in registered().values()],
                          *[d.label for d in model_defences("training").values()]]
    assert rows["baseline"]["rates"]["clean_accuracy"]["count"] == 18 and rows["baseline"]["clean_accuracy"] > 0.8
    gen = next(s for s in results["steps"] if s["step"] == "gen_patch")
    assert gen["details"]["targets"] == ["Banana"] * 3
    train = next(s for s in results["steps"] if s["step"] == "train")
    assert train["details"]["model_uri"] == "models:/fruits360_baseline_le_net/1"
    assert train["details"]["history"]["accuracy"][-1] > 0.8


@pytest.mark.pipeline
def test_the_custom_model_pipeline_end_to_end(parts, tmp_path):
    """A user's .keras model on a user's class folder, its classes in the model's order from a text
    file, the target by name."""
    _user_model(tmp_path / "users.keras")
    results = _run(tmp_path, "custom-model-patch", {
        "data_dir": parts / "data", "class_index": parts / "classes.txt", "model_file": tmp_path / "users.keras",
        "preprocessing": "torch", "max_iter": 5, "num_patch": 1, "patch_target_name": "nut"})
    steps = {s["step"]: s for s in results["steps"]}
    assert steps["import_model"]["details"]["model_uri"] == "models:/custom_custom/1"
    assert steps["gen_patch"]["details"]["targets"] == ["nut"]
    assert [r["label"] for r in results["comparison"]] == [
        "custom", "baseline", *[d.label for d in registered().values()]]


def test_the_new_pipelines_check_their_data_before_any_task(fruits_folder, imagenet_val, class_index, capsys):
    from advpatch.app import cli

    assert cli.main(["run", "fruits360-experiment", "-p", f"data_dir={fruits_folder}"]) == 2
    assert "patch_target must be -1 (random) or a class index in [0, 2], got 5" in capsys.readouterr().err
    assert cli.main(["run", "fruits360-experiment", "-p", f"data_dir={fruits_folder}", "-p",
                     "patch_target_name=Kiwi"]) == 2
    assert "patch_target_name 'Kiwi' is not a class of the data" in capsys.readouterr().err
    assert cli.main(["run", "imagenet-patch", "-p", f"data_dir={imagenet_val}", "-p", f"class_index={class_index}",
                     "-p", "patch_target_name=toastr"]) == 2
    assert "patch_target_name 'toastr' is not a class of the data (1000 classes" in capsys.readouterr().err

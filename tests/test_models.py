import numpy as np
import pytest

from advpatch import models
from advpatch.models import ModelError, ModelInfo, build_model, check_buildable, load_model, save_model, training
from advpatch.params import ParameterError


@pytest.mark.parametrize(
    "architecture, shape",
    [("le_net", (28, 28, 1)), ("shallow_net", (28, 28, 1)), ("conv_net", (28, 28, 1)), ("alex_net", (28, 28, 1)),
     ("resnet50", (32, 32, 3)), ("vgg16", (32, 32, 1))],
)
def test_each_architecture_outputs_class_probabilities(architecture, shape):
    model = build_model(architecture, shape, 7)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    out = np.asarray(model(x, training=False))
    assert out.shape == (2, 7)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_shape_that_does_not_fit_fails_before_building():
    with pytest.raises(ModelError, match=r"'resnet50' needs images of at least 32x32, but the dataset has 28x28x1"):
        check_buildable("resnet50", (28, 28, 1))
    with pytest.raises(ParameterError, match="model_architecture must be one of"):
        build_model("resnet", (32, 32, 3), 10)


def test_short_training_lowers_the_loss():
    from conftest import digits, small_split

    x, y, _ = digits("train")
    x, y = small_split(x, y, 20)
    training.seed_everything(0)
    model = build_model("le_net", (28, 28, 1), 10)
    history = training.fit(model, x, y, epochs=3, batch_size=32, optimizer="adam", learning_rate=0.003, seed=0)
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert len(history["loss"]) == 3


def test_fractional_epochs_and_validation_split():
    from conftest import digits

    x, y, _ = digits("test")
    x, y = x[:100], y[:100]
    training.seed_everything(0)
    model = build_model("shallow_net", (28, 28, 1), 10)
    history = training.fit(model, x, y, epochs=1.5, batch_size=10, optimizer="sgd", learning_rate=0.01,
                           validation_split=0.2, seed=0)
    assert len(history["loss"]) == 2 and "val_loss" in history
    tr, val = training.split_validation(100, 0.2, 0)
    assert len(val) == 20 and not set(tr) & set(val)
    with pytest.raises(ParameterError, match="validation_split must be in"):
        training.split_validation(100, 1.0, 0)


def _train_weights(seed):
    from conftest import digits, small_split

    x, y, _ = digits("train")
    x, y = small_split(x, y, 10)
    training.seed_everything(seed)
    model = build_model("le_net", (28, 28, 1), 10)
    training.fit(model, x, y, epochs=2, batch_size=16, optimizer="rmsprop", learning_rate=0.001, seed=seed)
    return [w.copy() for w in model.get_weights()]


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = _train_weights(5), _train_weights(5), _train_weights(6)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))


def test_model_artifact_round_trip(tmp_path):
    model = build_model("le_net", (28, 28, 1), 10)
    info = ModelInfo("le_net", (28, 28, 1), [str(i) for i in range(10)], provenance={"step": "test"})
    save_model(model, info, tmp_path / "m")
    loaded, info2 = load_model(tmp_path / "m")
    assert info2 == info
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    with pytest.raises(ModelError, match=r"model\.json is missing"):
        models.read_model_info(tmp_path)


# --------------------------------------------------------------------------- pretrained ImageNet models
def test_a_pretrained_model_takes_pixels_in_0_1_and_matches_keras_own_preprocessing(resnet50_weights, tmp_path):
    """Preprocessing lives in the model: [0, 1] pixels in, the same probabilities as Keras' own
    preprocess_input path; saved and loaded back with safe_mode; its logits layer serves attacks."""
    import keras
    from keras.applications.resnet50 import preprocess_input

    from advpatch.models.classifier import Classifier

    path, reference = resnet50_weights
    names = [f"class {i}" for i in range(1000)]
    model, info = models.pretrained_model("resnet50", path, names)
    x = np.random.default_rng(0).random((2, 224, 224, 3)).astype("float32")
    expected = reference.predict(preprocess_input(x * 255.0), verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    assert info.logits_layer == "predictions" and info.provenance == {"weights": path.name, "preprocessing": "caffe"}
    save_model(model, info, tmp_path / "m")
    loaded, info2 = load_model(tmp_path / "m")  # safe_mode=True: the preprocessing is a registered layer
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-5)
    assert info2.preprocessing == models.PREPROCESSING_TEXT["caffe"] and info2.input_shape == (224, 224, 3)
    classifier = Classifier(loaded, info2)  # attacks and PGD optimize on the logits
    assert classifier.from_logits
    scores = keras.ops.convert_to_numpy(classifier.scores(x))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.softmax(scores)), expected, atol=1e-5)


def test_a_weights_file_is_checked_before_anything_is_built(resnet50_weights, tmp_path):
    import h5py

    path, _ = resnet50_weights
    names = [str(i) for i in range(1000)]
    with pytest.raises(ModelError, match=r"weights file .*nope\.h5 does not exist \(expected Keras' "
                                         r"vgg16_weights_tf_dim_ordering_tf_kernels\.h5\)"):
        models.check_weights("vgg16", tmp_path / "nope.h5")
    (tmp_path / "corrupt.h5").write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(ModelError, match=r"corrupt\.h5 is not an HDF5 file"):
        models.pretrained_model("resnet50", tmp_path / "corrupt.h5", names)
    with pytest.raises(ModelError, match=r"holds resnet50 weights, not vgg16's"):
        models.pretrained_model("vgg16", path, names)
    with h5py.File(tmp_path / "notop.h5", "w") as f:  # what a '_notop' file's layer list looks like
        f.attrs["layer_names"] = [b"input_layer", b"conv1_pad", b"conv1_conv", b"avg_pool"]
    with pytest.raises(ModelError, match=r"no classification top"):
        models.pretrained_model("resnet50", tmp_path / "notop.h5", names)
    with pytest.raises(ModelError, match=r"ImageNet weights have 1,000 classes but the data has 10: load it with "
                                         r"class_index=imagenet_class_index.json"):
        models.pretrained_model("resnet50", path, names[:10])
    with pytest.raises(ModelError, match=r"model_architecture must be one of resnet50, vgg16"):
        models.check_weights("le_net", path)


def test_class_index_files(tmp_path):
    """Keras' imagenet_class_index.json (repeated names made unique by their WordNet id) and a text
    file with one name per line; sub-folders match by WordNet id, name or index."""
    import json

    from advpatch.data.readers import SourceError, read_class_index

    index = {str(i): [f"n{i:08d}", f"class {i}"] for i in range(1000)}
    index["7"] = ["n00000007", "crane"]
    index["9"] = ["n00000009", "crane"]
    (tmp_path / "imagenet_class_index.json").write_text(json.dumps(index))
    classes = read_class_index(tmp_path / "imagenet_class_index.json")
    assert (classes.names[0], classes.names[7], classes.names[9], len(classes.names)) == (
        "class 0", "crane (n00000007)", "crane (n00000009)", 1000)
    assert classes.match(["n00000003", "class 5", "999", "crane (n00000009)"], tmp_path) == [3, 5, 999, 9]
    with pytest.raises(SourceError, match=r"sub-folder\(s\) 'n99999999' of .* match no class in the class index"):
        classes.match(["n00000001", "n99999999"], tmp_path)
    (tmp_path / "names.txt").write_text("Apple Braeburn\nBanana\n\nCherry\n")
    text = read_class_index(tmp_path / "names.txt")
    assert text.names == ["Apple Braeburn", "Banana", "Cherry"] and text.match(["Banana", "0"], tmp_path) == [1, 0]
    (tmp_path / "twice.txt").write_text("a\nb\na\n")
    with pytest.raises(SourceError, match="names a class twice"):
        read_class_index(tmp_path / "twice.txt")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(SourceError, match=r"not in imagenet_class_index\.json's format"):
        read_class_index(tmp_path / "bad.json")
    with pytest.raises(SourceError, match="does not exist"):
        read_class_index(tmp_path / "missing.json")

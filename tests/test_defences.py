"""Preprocessing defences (equal to ART's where wrapped), adversarial training, cross-run reuse."""

import io
import json
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest

from advpatch import steps
from advpatch.data.dataset import Dataset, to_float, to_uint8
from advpatch.data.writer import write_dataset
from advpatch.params import ParameterError

CLASSES = ["a", "b", "c"]


def _data(tmp_path, channels=1, n=12, name="d", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 16, 16, channels), dtype=np.uint8)
    y = rng.integers(0, 3, n)
    cols = {"patched": np.arange(n) % 2 == 0, "patch_target": np.full(n, 2, np.int16)}
    write_dataset(tmp_path / name, x, y, CLASSES, columns=cols, provenance=[{"step": "test"}])
    return x, y, cols


def _defend(kind, tmp_path, settings, out="out", apply_fit=False, apply_predict=True, data="d", **kw):
    flags = {f"{kind}_apply_fit": apply_fit, f"{kind}_apply_predict": apply_predict}
    return getattr(steps, kind)(data=str(tmp_path / data), defended_data=str(tmp_path / out), **settings, **flags, **kw)


@pytest.mark.parametrize("channels", [1, 3])
def test_spatial_smoothing_equals_art_and_removes_salt(tmp_path, outputs, channels):
    from art.defences.preprocessor import SpatialSmoothing

    x, y, cols = _data(tmp_path, channels)
    x[0] = 0
    x[0, 8, 8] = 255  # one salt pixel
    write_dataset(tmp_path / "d2", x, y, CLASSES, columns=cols)
    _defend("spatial_smoothing", tmp_path, {"spatial_smoothing_window_size": 3}, data="d2")
    out = Dataset(tmp_path / "out").load()
    art = SpatialSmoothing(window_size=3, channels_first=False, clip_values=(0.0, 1.0))(to_float(x))[0]
    np.testing.assert_array_equal(out["x"], to_uint8(art))
    assert out["x"].dtype == np.uint8 and out["x"].shape == x.shape
    assert out["x"][0].max() == 0  # the median removed the salt pixel
    np.testing.assert_array_equal(out["patched"], cols["patched"])  # columns pass through


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("channels_first", [False, True])
def test_jpeg_equals_art_grayscale_and_rgb(tmp_path, outputs, channels, channels_first):
    from art.defences.preprocessor import JpegCompression

    x, _, _ = _data(tmp_path, channels)
    _defend("jpeg_compression", tmp_path, {"jpeg_compression_quality": 20,
                                           "jpeg_compression_channels_first": channels_first})
    out = Dataset(tmp_path / "out").load()["x"]
    art = JpegCompression(clip_values=(0.0, 1.0), quality=20, channels_first=False)(to_float(x))[0]
    np.testing.assert_array_equal(out, to_uint8(art))
    assert np.abs(out.astype(int) - x).mean() > 5  # noise images compress badly at quality 20
    _defend("jpeg_compression", tmp_path, {"jpeg_compression_quality": 100}, out="hq")
    hq = Dataset(tmp_path / "hq").load()["x"]
    assert np.abs(hq.astype(int) - x).mean() < np.abs(out.astype(int) - x).mean()


def test_gaussian_noise_equals_art_with_the_same_draws(tmp_path, outputs):
    from art.defences.preprocessor import GaussianAugmentation

    x, _, _ = _data(tmp_path, n=200)
    _defend("gaussian_augmentation", tmp_path, {"gaussian_augmentation_sigma": 0.1,
                                                "gaussian_augmentation_ratio": 1.0}, batch_size=500, seed=3)
    out = Dataset(tmp_path / "out").load()["x"]
    np.random.seed(3 * 100003)  # the step seeds ART's global draws per batch: seed * 100003 + batch index
    art = GaussianAugmentation(sigma=0.1, augmentation=False, clip_values=(0.0, 1.0), apply_fit=False,
                               apply_predict=True)(to_float(x))[0]
    np.testing.assert_array_equal(out, to_uint8(art))
    mid = (x > 60) & (x < 195)  # away from clipping, the noise has the requested spread
    assert (out.astype(float) - x)[mid].std() / 255 == pytest.approx(0.1, rel=0.1)


def test_gaussian_augmentation_adds_exact_count_and_keeps_columns(tmp_path, outputs):
    x, _, _ = _data(tmp_path, n=40)
    result = _defend("gaussian_augmentation", tmp_path,
                     {"gaussian_augmentation_perform_data_augmentation": True, "gaussian_augmentation_ratio": 0.25,
                      "gaussian_augmentation_sigma": 0.2}, apply_fit=True, apply_predict=False, data_role="fit",
                     batch_size=16)
    out = Dataset(tmp_path / "out").load()
    assert len(out["y"]) == 50 and out["augmented"].sum() == 10 and result.metrics["num_changed"] == 10
    np.testing.assert_array_equal(out["x"][~out["augmented"]], x)
    assert set(out["patch_target"].tolist()) == {2}


def test_apply_fit_and_apply_predict_follow_the_data_role(tmp_path, outputs):
    x, _, _ = _data(tmp_path)
    result = _defend("spatial_smoothing", tmp_path, {"spatial_smoothing_window_size": 5}, data_role="fit")
    out = Dataset(tmp_path / "out")
    np.testing.assert_array_equal(out.load()["x"], x)  # apply_fit is False: passed through
    assert result.metrics["applied"] == 0.0 and out.spec.provenance[-1]["applied"] is False
    _defend("spatial_smoothing", tmp_path, {"spatial_smoothing_window_size": 5}, data_role="fit", apply_fit=True,
            out="fit")
    assert not np.array_equal(Dataset(tmp_path / "fit").load()["x"], x)
    assert Dataset(tmp_path / "fit").spec.provenance[-1]["spatial_smoothing_window_size"] == 5


@pytest.mark.parametrize("kind, settings, kw, message", [
    ("gaussian_augmentation", {"gaussian_augmentation_perform_data_augmentation": True,
                               "gaussian_augmentation_ratio": 1.0, "gaussian_augmentation_sigma": 0.1},
     {"apply_fit": True, "apply_predict": True}, "needs gaussian_augmentation_apply_fit=True and "
                                                 "gaussian_augmentation_apply_predict=False"),
    ("gaussian_augmentation", {"gaussian_augmentation_ratio": 1.0, "gaussian_augmentation_sigma": 0.0}, {},
     "gaussian_augmentation_sigma must be a number > 0, got 0.0"),
    ("gaussian_augmentation", {"gaussian_augmentation_ratio": 1.5, "gaussian_augmentation_sigma": 0.1}, {},
     r"gaussian_augmentation_ratio must be in \[0, 1\], got 1.5"),
    ("jpeg_compression", {"jpeg_compression_quality": 101}, {},
     r"jpeg_compression_quality must be an integer in \[1, 100\]"),
    ("spatial_smoothing", {"spatial_smoothing_window_size": 0}, {},
     "spatial_smoothing_window_size must be an integer in"),
    ("spatial_smoothing", {"spatial_smoothing_window_size": 3}, {"data_role": "train"},
     "data_role must be one of 'fit', 'predict'"),
])
def test_invalid_defence_settings_are_rejected(tmp_path, outputs, kind, settings, kw, message):
    _data(tmp_path)
    with pytest.raises(ParameterError, match=message):
        _defend(kind, tmp_path, settings, **kw)
    assert not (tmp_path / "out").exists() and not (outputs / "mlflow").exists()


def test_pgd_adversarial_training_beats_the_baseline_under_pgd():
    from conftest import digits, small_split

    from advpatch import models
    from advpatch.models import training
    from advpatch.models.classifier import Classifier

    x, y, _ = digits("train")
    x, y = small_split(x, y, 40)
    xt, yt, _ = digits("test")
    pgd = dict(pgd_eps=0.1, pgd_eps_step=0.025, pgd_max_iter=5)
    scores = {}
    for adversarial in (False, True):
        training.seed_everything(0)
        model = models.build_model("le_net", (28, 28, 1), 10)
        fit = dict(epochs=6, batch_size=32, optimizer="adam", learning_rate=0.003, seed=0)
        if adversarial:
            training.fit_adversarial(model, x, y, **fit, **pgd, pgd_ratio=0.5)
        else:
            training.fit(model, x, y, **fit)
        classifier = Classifier(model, models.ModelInfo("le_net", (28, 28, 1), [str(i) for i in range(10)]))
        scores[adversarial] = training.pgd_accuracy(classifier, xt, yt, eps=0.1, eps_step=0.025, max_iter=5)
    assert scores[True] > scores[False] + 0.15, scores


def test_datasets_come_back_by_mlflow_run_id(tmp_path, outputs):
    """deploy_patch logs adv_testing.tar (the seed's cross-run reuse); load_dataset brings it back
    with its patch provenance, as an mlflow-run:// source, for train and the defences."""
    from advpatch.patches import PatchSet, make_mask

    steps.load_dataset(dataset=str(tmp_path / "train"), source="digits", split="train", max_examples=60, seed=0)
    ps = PatchSet(np.ones((1, 28, 28, 1), np.float32), make_mask(28, "square")[None], np.array([5]),
                  [str(i) for i in range(10)], (28, 28, 1))
    ps.save(tmp_path / "ps")
    deployed = steps.deploy_patch(data=str(tmp_path / "train"), patches=str(tmp_path / "ps"),
                                  patched_data=str(tmp_path / "patched"), patch_deployment_method="augment",
                                  patch_application_rate=0.5)
    run_id = deployed.details["mlflow_run_id"]
    assert deployed.details["mlflow_source"] == f"mlflow-run://{run_id}/adv_testing.tar#adversarial_patched_data"
    for source in (deployed.details["mlflow_source"], f"mlflow-run://{run_id}/adv_testing.tar"):
        steps.load_dataset(dataset=str(tmp_path / "back"), source=source)
        back = Dataset(tmp_path / "back")
        original = Dataset(tmp_path / "patched").load()
        for key, values in back.load().items():  # every image and every provenance column
            np.testing.assert_array_equal(values, original[key])
        assert [p["step"] for p in back.spec.provenance] == ["load_dataset", "deploy_patch", "load_dataset"]
        assert back.spec.provenance[-1]["source"] == source
        import shutil

        shutil.rmtree(tmp_path / "back")
    steps.load_dataset(dataset=str(tmp_path / "back"), source=deployed.details["mlflow_source"])
    trained = steps.train(training_data=str(tmp_path / "back"), model=str(tmp_path / "model"), epochs=0.5)
    info = json.loads((tmp_path / "model" / "model.json").read_text())
    assert info["provenance"]["train_data"][-2]["step"] == "deploy_patch"  # trained on the logged data
    assert trained.details["history"]["loss"]
    smoothed = steps.spatial_smoothing(data=str(tmp_path / "back"), defended_data=str(tmp_path / "smoothed"),
                                       output_tar_name="smoothed.tar")
    assert len(Dataset(tmp_path / "smoothed")) == 90
    assert smoothed.details["mlflow_source"].endswith("/smoothed.tar#spatial_smoothing")
    with pytest.raises(ParameterError, match=r"cannot fetch 'nothing\.tar' from MLflow run"):
        steps.load_dataset(dataset=str(tmp_path / "x"), source=f"mlflow-run://{run_id}/nothing.tar")
    with pytest.raises(ParameterError, match=r"source must look like mlflow-run://RUN_ID/TAR_NAME\[#FOLDER\]"):
        steps.load_dataset(dataset=str(tmp_path / "x"), source=f"mlflow-run://{run_id}/../x.tar")
    assert not (tmp_path / "x").exists()


def test_unsafe_archives_are_refused(tmp_path, outputs):
    import mlflow

    from advpatch.io.files import ArchiveError
    from advpatch.tracking.runs import _experiment_id, configure

    configure()
    experiment = _experiment_id("unsafe-archives")  # artifacts beside the test's store, not in ./mlruns
    for i, (name, kind) in enumerate([("adversarial_patched_data/../../evil", tarfile.REGTYPE),
                                      ("adversarial_patched_data/link", tarfile.SYMTYPE),
                                      ("other/dataset.json", tarfile.REGTYPE)]):
        archive = tmp_path / f"a{i}" / "adv_testing.tar"
        archive.parent.mkdir()
        with tarfile.open(archive, "w") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(b"x") if kind == tarfile.REGTYPE else None)
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_artifact(str(archive))
        with pytest.raises(ArchiveError, match="unsafe or foreign entry"):
            steps.load_dataset(dataset=str(tmp_path / f"out{i}"),
                               source=f"mlflow-run://{run.info.run_id}/adv_testing.tar#adversarial_patched_data")
        assert not (tmp_path / f"out{i}").exists()
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_channels_first_compresses_in_nchw_as_art_does(channels):
    """The seed's flag is honoured: the images are compressed in NCHW layout, exactly as ART's
    JpegCompression(channels_first=True) does on NCHW data, and come back channels-last."""
    from art.defences.preprocessor import JpegCompression as ArtJpeg

    from advpatch.defences.preprocessing import JpegCompression

    x = to_float(np.random.default_rng(1).integers(0, 256, (5, 16, 16, channels), dtype=np.uint8))
    ours = JpegCompression(30, channels_first=True).numpy(x)
    art = ArtJpeg(clip_values=(0.0, 1.0), quality=30, channels_first=True)(x.transpose(0, 3, 1, 2))[0]
    np.testing.assert_array_equal(ours, art.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_feature_squeezing_equals_art(tmp_path, outputs, bits):
    from art.defences.preprocessor import FeatureSqueezing

    x, _, cols = _data(tmp_path, 3)
    _defend("feature_squeezing", tmp_path, {"feature_squeezing_bit_depth": bits})
    out = Dataset(tmp_path / "out").load()
    art = FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=bits)(to_float(x))[0]
    np.testing.assert_array_equal(out["x"], to_uint8(art))
    assert len(np.unique(out["x"])) <= 2**bits
    np.testing.assert_array_equal(out["patched"], cols["patched"])


def test_every_defence_is_found_and_everything_follows_from_it(tmp_path):
    """A defence is its class and its parameters' table entry: the registry finds every one, and its
    step, its component, the adaptive attacker's choice, the pipelines' parameter and the pipelines'
    rows follow without a list (feature squeezing was added this way)."""
    import yaml

    from advpatch import components, params
    from advpatch.app import cli
    from advpatch.defences.preprocessing import Defence, registered

    defences = registered()
    assert list(defences) == list(params.PREPROCESSING_DEFENCES) and "feature_squeezing" in defences
    gen_patch = {p.name: p for p in params.STEP_PARAMS["gen_patch"]}
    assert gen_patch["defence"].rule.options == ("none", *defences)
    assert cli.main(["compile", "mnist-defences", "--output", str(tmp_path / "p.yaml")]) == 0
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    for name, cls in defences.items():
        assert issubclass(cls, Defence) and cls.gradient in ("exact", "straight_through", "expectation")
        assert cls.label and cls.summary and cls.setting() == params.PREPROCESSING_DEFENCES[name][0]
        assert name in steps.STEPS and name in components.__all__
        assert cls.setting() in spec["root"]["inputDefinitions"]["parameters"]  # the pipeline's knob
        assert cls.setting() in gen_patch  # the adaptive attacker's knob
        rows = [t for t in tasks.values() if t.get("taskInfo", {}).get("name", "").startswith(f"{cls.label}:")]
        assert len(rows) == 3, name  # its transferred, adaptive and worst-case test sets
        # behind the classifier interface: the forward pass a model sees is the one on data
        defence = cls.from_values({p.name: p.default for p in params.STEP_PARAMS[name]})
        images = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 1)).astype(np.float32)
        if cls.gradient == "straight_through":
            import tensorflow as tf

            np.testing.assert_array_equal(defence(tf.constant(images)).numpy(), defence.numpy(images))


def test_training_and_certified_defences_are_objects_the_pipelines_find(tmp_path):
    """Every defence, of every kind, is one self-describing object: a training or certified one
    names its component, the artifacts it takes (by role) and the pipeline parameters that set it;
    mnist-defences calls each one's component with exactly those, under its display name and row,
    and runs an adaptive attacker against each training defence's model."""
    import yaml

    from advpatch import components, params
    from advpatch.app import cli
    from advpatch.defences import base

    every = {kind: base.registered(kind) for kind in base.KINDS}
    labels = [cls.label for found in every.values() for cls in found.values()]
    assert len(labels) == len(set(labels)) and len(every["preprocessing"]) == len(params.PREPROCESSING_DEFENCES)
    assert list(every["training"]) == ["patched_data", "pgd"]
    assert list(every["certified"]) == ["derandomized_smoothing", "patch_cleanser", "patch_cleanser_masked"]
    assert cli.main(["compile", "mnist-defences", "--output", str(tmp_path / "p.yaml")]) == 0
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    tasks = {t["taskInfo"]["name"]: t for t in spec["components"]["comp-exit-handler-1"]["dag"]["tasks"].values()}
    pipeline = {p.name: p.default for p in params.PIPELINE_PARAMS["mnist-defences"]}
    for kind in ("training", "certified"):
        for name, cls in base.model_defences(kind).items():
            assert cls.kind == kind and cls.label and cls.summary and cls.component in components.__all__, name
            spec_ = getattr(components, cls.component).component_spec
            assert set(cls.inputs) <= set(spec_.inputs) and set(cls.inputs.values()) <= set(base.ROLES), name
            arguments = cls.arguments(pipeline)
            assert set(arguments) <= set(spec_.inputs), name
            task = tasks[cls.display]
            assert task["componentRef"]["name"].startswith(f"comp-{cls.component.replace('_', '-')}"), name
            given = task["inputs"]["parameters"]
            assert given["row"]["runtimeValue"]["constant"] == cls.label
            assert set(given) >= set(arguments) and set(task["inputs"]["artifacts"]) == set(cls.inputs), name
            adaptive = [n for n in tasks if n == f"gen_patch: adaptive, {cls.label}"]
            assert len(adaptive) == (1 if cls.adaptive else 0), name


def test_a_new_training_defence_needs_only_its_class(tmp_path):
    """A new training defence (a TrainingDefence subclass; the registry imports every module of
    advpatch.defences, so one in a module of its own there is found) is picked up by the pipelines:
    its task, its adaptive attacker and its worst-case row, with no list edited (in a process of its
    own, so the class does not outlive the test)."""
    script = tmp_path / "extra.py"
    script.write_text(textwrap.dedent('''
        import sys
        import yaml
        from advpatch.app import cli
        from advpatch.defences.training import TrainingDefence

        class WiderTraining(TrainingDefence):
            name = "wider"
            label = "wider training"
            summary = "Train longer"
            display = "train: wider"
            rank = 3
            model_tag = "wider"
            extra = {"epochs": 3.0}

        assert cli.main(["compile", "mnist-defences", "--output", sys.argv[1]]) == 0
        spec = next(yaml.safe_load_all(open(sys.argv[1]).read()))
        names = [t["taskInfo"]["name"] for t in spec["components"]["comp-exit-handler-1"]["dag"]["tasks"].values()]
        for name in ("train: wider", "gen_patch: adaptive, wider training", "infer: wider training (adaptive)",
                     "infer: wider training (worst case)"):
            assert name in names, name
        print("found")
    '''))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "p.yaml")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("found"), done.stderr[-2000:]


def test_defences_on_uint8_images_keep_the_bytes_of_the_float_path(monkeypatch):
    """A defence step works on the pixels: JPEG skips the float round trip, which is the identity on
    every byte, and compresses on every core; the same bytes either way, and with one thread."""
    from advpatch.defences.preprocessing import GaussianNoise, JpegCompression, seeded

    every = np.arange(256, dtype=np.uint8)
    assert np.array_equal((to_float(every) * 255).astype(np.uint8), every)  # ART's truncation, on our floats
    assert np.array_equal(to_uint8((every / 255.0).astype(np.float32)), every)
    x = np.random.default_rng(2).integers(0, 256, (9, 20, 20, 3), dtype=np.uint8)
    for defence in (JpegCompression(40), JpegCompression(40, channels_first=True), GaussianNoise(0.1)):
        slow = to_uint8(seeded(defence.numpy, 7)(to_float(x)))
        monkeypatch.setenv("ADVPATCH_WORKERS", "1")
        one = defence.on_images(x, 7)
        monkeypatch.setenv("ADVPATCH_WORKERS", "2")
        assert np.array_equal(defence.on_images(x, 7), slow) and np.array_equal(one, slow), defence.name


def test_every_defence_gives_a_classifier_behind_one_interface():
    """Defence.classifier, for every defence of every kind: a Predictor (float images -> class
    probabilities and labels); a preprocessing defence's is the model with the defence in front, a
    training defence's the hardened model itself, a certified defence's a CertifiedPredictor that
    also certifies (the step tests check its predictions and certificates against the steps')."""
    from advpatch import params
    from advpatch.defences import base
    from advpatch.models import ModelInfo, build_model
    from advpatch.models.classifier import CertifiedPredictor, Classifier, Predictor

    x = to_float(_data_images(8))
    names = [str(i) for i in range(10)]
    plain = Classifier(build_model("le_net", (28, 28, 1), 10), ModelInfo("le_net", (28, 28, 1), names))
    views = Classifier(build_model("le_net", (28, 28, 2), 10), ModelInfo("le_net", (28, 28, 2), names))
    for kind in base.KINDS:
        for name, cls in base.registered(kind).items():
            assert "classifier" in {k for c in cls.__mro__[:-1] if c is not base.Defence for k in vars(c)}, name
            values = params.validate_step(cls.component, {})
            defended = cls.classifier(views if name == "derandomized_smoothing" else plain, values)
            assert isinstance(defended, Predictor) and defended.class_names == names, name
            probabilities, labels = defended.predict(x), defended.predict_labels(x)
            assert probabilities.shape == (8, 10) and labels.shape == (8,), name
            assert (labels == probabilities.argmax(axis=1)).all() or cls.name == "gaussian_augmentation", name
            if kind == "preprocessing":  # the model with the defence in front
                assert defended is not plain and defended.transforms[0].name == name
                if cls.gradient != "expectation":
                    reference = plain.predict(cls.from_values(values).numpy(x))
                    np.testing.assert_allclose(probabilities, reference, atol=1e-5, err_msg=name)
            elif kind == "training":  # the defence is in the model's weights
                assert defended is plain
            else:
                assert isinstance(defended, CertifiedPredictor), name
                certified = defended.certify(x, 3)
                assert certified.dtype == bool and certified.shape == (8,), name
                wrong = (labels + 1) % 10  # a certificate is for the defended prediction only
                assert not defended.certify(x, 3, wrong).any(), name


def _data_images(n):
    from advpatch.data.readers import embedded_digits

    return embedded_digits("test")[0][:n]

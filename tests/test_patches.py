"""The patch engine: placement geometry, application, generation, patch sets, deploy/infer steps."""

import json

import numpy as np
import pytest

from advpatch import params, patches, steps
from advpatch.data.dataset import Dataset, to_float
from advpatch.params import ParameterError
from advpatch.patches import PatchSetError

CLASSES = [str(i) for i in range(10)]


def _patch_set(channels=1, size=28, value=1.0, shape="square", targets=(5,)):
    k = len(targets)
    return patches.PatchSet(np.full((k, size, size, channels), value, np.float32),
                            np.repeat(patches.make_mask(size, shape)[None], k, 0), np.array(targets), CLASSES,
                            (size, size, channels))


def _fixed(n, angle=0.0, scale=0.5, x=None, y=None, hw=(28, 28)):
    f = np.float32
    return patches.Placements(np.full(n, angle, f), np.full(n, scale, f),
                              np.full(n, (hw[1] - 1) / 2 if x is None else x, f),
                              np.full(n, (hw[0] - 1) / 2 if y is None else y, f))


@pytest.mark.parametrize("scale", [0.2, 0.3, 0.4, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("hw", [(28, 28), (32, 48)])
def test_square_patch_side_is_scale_times_image_side(scale, hw):
    images = np.zeros((1, *hw, 1), np.uint8)
    out = patches.apply_patches(images, _patch_set(), np.zeros(1, np.int32),
                                _fixed(1, scale=scale, x=(hw[1] - 1) / 2 + 0.3, y=(hw[0] - 1) / 2 - 0.2, hw=hw))
    covered = (out[0, ..., 0] >= 128).sum()
    side = scale * min(hw)
    assert (side - 1) ** 2 <= covered <= (side + 1) ** 2
    rows, cols = np.nonzero(out[0, ..., 0] >= 128)
    assert side - 1 <= rows.max() - rows.min() + 1 <= side + 1
    assert side - 1 <= cols.max() - cols.min() + 1 <= side + 1


def test_nothing_outside_the_rotated_patch_changes():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 28, 28, 3), dtype=np.uint8)
    ps = _patch_set(channels=3, value=0.5)
    where = patches.sample_placements(rng, 50, (28, 28), rotation_max=180, scale_min=0.2, scale_max=0.6)
    out = patches.apply_patches(images, ps, np.zeros(50, np.int32), where)
    for i in range(50):
        changed = np.argwhere((out[i] != images[i]).any(-1))
        # each changed pixel, in the patch's own frame, lies within the square (plus the bilinear edge)
        dy, dx = changed[:, 0] - where.y[i], changed[:, 1] - where.x[i]
        t = np.deg2rad(where.angle[i])
        u = np.cos(t) * dx + np.sin(t) * dy
        v = -np.sin(t) * dx + np.cos(t) * dy
        half = where.scale[i] * 28 / 2
        assert np.abs(u).max() <= half + 1 and np.abs(v).max() <= half + 1


def test_rotation_keeps_the_patch_inside_the_image():
    rng = np.random.default_rng(1)
    n = 400
    where = patches.sample_placements(rng, n, (28, 40), rotation_max=180, scale_min=0.1, scale_max=0.7)
    half = where.scale * 28 / 2 * (np.abs(np.cos(np.deg2rad(where.angle))) + np.abs(np.sin(np.deg2rad(where.angle))))
    assert np.all(where.x - half >= -0.5 - 1e-4) and np.all(where.x + half <= 39.5 + 1e-4)
    assert np.all(where.y - half >= -0.5 - 1e-4) and np.all(where.y + half <= 27.5 + 1e-4)
    assert np.abs(where.angle).max() > 150  # the whole range is used
    # so the full patch area lands on the image
    images = np.zeros((n, 28, 40, 1), np.uint8)
    out = patches.apply_patches(images, _patch_set(), np.zeros(n, np.int32), where)
    area = (out[..., 0] >= 128).sum(axis=(1, 2))
    side = where.scale * 28
    assert np.all(np.abs(area - side**2) <= 2 * side + 2)


def test_a_circular_patch_reaches_the_edges_at_any_rotation_and_stays_inside():
    rng = np.random.default_rng(2)
    n = 2000
    mask = patches.make_mask(20, "circle")
    where = patches.sample_placements(rng, n, (28, 28), rotation_max=45, scale_min=0.5, scale_max=0.5, mask=mask)
    # its mask never leaves the image ...
    images = np.zeros((n, 28, 28, 1), np.uint8)
    ps = patches.PatchSet(np.ones((1, 20, 20, 1), np.float32), mask[None], np.array([5]), CLASSES, (28, 28, 1))
    out = patches.apply_patches(images, ps, np.zeros(n, np.int32), where, batch_size=512)
    area = (out[..., 0] >= 128).sum(axis=(1, 2))
    assert area.min() >= 0.95 * np.median(area)
    # ... yet, unlike a rotated square, it goes up to the border whatever its angle
    reach = np.abs(where.x - 13.5)
    square = patches.sample_placements(np.random.default_rng(2), n, (28, 28), rotation_max=45, scale_min=0.5,
                                       scale_max=0.5)
    tilted = np.abs(where.angle) > 30
    assert reach[tilted].max() > 6.8 and np.abs(square.x - 13.5)[tilted].max() < 5.3


def test_a_patch_larger_than_the_image_is_centred():
    where = patches.sample_placements(np.random.default_rng(0), 200, (28, 28), rotation_max=22.5, scale_min=0.999,
                                      scale_max=1.0, mask=patches.make_mask(28, "square"))
    tilted = np.abs(where.angle) > 2  # a tilted square of the image's side no longer fits
    assert tilted.sum() > 150 and np.all(where.x[tilted] == 13.5) and np.all(where.y[tilted] == 13.5)
    # a disk moves only as far as its mask's support (26 of 28 pixels across) allows
    disk = patches.make_mask(28, "circle")
    where = patches.sample_placements(np.random.default_rng(0), 200, (28, 28), rotation_max=22.5, scale_min=0.999,
                                      scale_max=1.0, mask=disk)
    room = 14 - 28 * np.abs(patches.mask_outline(disk)).max()
    assert 0.5 < room <= 1.0 and np.abs(where.x - 13.5).max() <= room + 1e-4


def test_mask_outline():
    np.testing.assert_allclose(np.abs(patches.mask_outline(None)), 0.5)
    np.testing.assert_allclose(np.abs(patches.mask_outline(patches.make_mask(28, "square"))).max(axis=0), [0.5, 0.5])
    disk = patches.make_mask(28, "circle")
    columns = np.flatnonzero((disk > 0).any(axis=0))
    outline = patches.mask_outline(disk)
    assert np.abs(outline[:, 0]).max() == pytest.approx((columns.max() - columns.min() + 1) / 2 / 28)
    with pytest.raises(ParameterError, match="the patch mask is empty"):
        patches.mask_outline(np.zeros((8, 8)))


def test_learning_rate_schedule():
    rates = patches.learning_rates(0.1, 100, 0.3)
    np.testing.assert_allclose(rates[:70], 0.1)
    assert np.all(np.diff(rates[70:]) < 0) and rates[-1] == pytest.approx(0.001)
    np.testing.assert_allclose(patches.learning_rates(0.1, 10, 0.0), 0.1)
    np.testing.assert_allclose(patches.learning_rates(0.1, 4, 1.0)[-1], 0.001, rtol=1e-5)


def test_patch_losses():
    import keras
    import tensorflow as tf

    inputs = keras.Input((4, 4, 1))
    logits_layer = keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(inputs))
    from advpatch.models import ModelInfo
    from advpatch.models.classifier import Classifier

    model = Classifier(keras.Model(inputs, keras.layers.Softmax()(logits_layer)),
                       ModelInfo("tiny", (4, 4, 1), list("abc")))
    logits = tf.constant([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]])
    weights = tf.constant([1.0, 1.0, 0.0])  # the last row is padding
    p = tf.nn.softmax(logits).numpy()[:2, 0]
    expected = {"cross_entropy": -np.log(p).mean(), "success": -np.log(p.mean())}
    expected["combined"] = expected["cross_entropy"] + expected["success"]
    for loss, value in expected.items():
        opt = patches.PatchOptimizer(model, (4, 4, 1), 4, np.ones((4, 4)), 0.1, loss=loss)
        got, mean_ce = opt._objective(logits, weights, tf.constant(0))
        assert got.numpy() == pytest.approx(value, rel=1e-5)
        assert mean_ce.numpy() == pytest.approx(expected["cross_entropy"], rel=1e-5)
    for bad in ("hinge", "auto"):  # 'auto' is resolved before, from the position distribution
        with pytest.raises(ParameterError, match=rf"loss must be one of .*'combined'.*got '{bad}'"):
            patches.PatchOptimizer(model, (4, 4, 1), 4, np.ones((4, 4)), 0.1, loss=bad)
    assert patches.resolve_loss("auto", "center") == "success"
    assert patches.resolve_loss("auto", "random") == "combined"
    assert patches.resolve_loss("cross_entropy", "center") == "cross_entropy"
    with pytest.raises(ParameterError, match=r"patch_loss must be one of 'auto', 'combined', .*, got 'hinge'"):
        patches.resolve_loss("hinge", "random")
    with pytest.raises(ParameterError, match=r"lr_decay must be in \[0, 1\], got 1.5"):
        patches.PatchOptimizer(model, (4, 4, 1), 4, np.ones((4, 4)), 0.1, lr_decay=1.5)


def test_center_location_and_fixed_scale():
    where = patches.sample_placements(np.random.default_rng(0), 10, (28, 28), rotation_max=0, scale_min=0.1,
                                      scale_max=1.0, location="center", patch_scale=0.4)
    assert np.all(where.x == 13.5) and np.all(where.y == 13.5) and np.all(where.scale == np.float32(0.4))
    assert np.all(where.angle == 0)


def test_inverse_transforms_invert():
    where = patches.sample_placements(np.random.default_rng(0), 20, (28, 32), rotation_max=90, scale_min=0.2,
                                      scale_max=0.9)

    def mats(rows):
        m = np.zeros((len(rows), 3, 3))
        m[:, 0], m[:, 1], m[:, 2, 2] = rows[:, :3], rows[:, 3:6], 1
        return m

    prod = mats(patches.transforms(where, 20, (28, 32))) @ mats(patches.inverse_transforms(where, 20, (28, 32)))
    np.testing.assert_allclose(prod, np.broadcast_to(np.eye(3), prod.shape), atol=1e-5)


def test_training_overlay_matches_overlay_and_tensorflow_gradient():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((8, 28, 28, 3), dtype=np.float32))
    patch = tf.Variable(rng.random((20, 20, 3), dtype=np.float32))
    mask = tf.constant(patches.make_mask(20, "circle")[..., None])
    where = patches.sample_placements(rng, 8, (28, 28), rotation_max=45, scale_min=0.3, scale_max=0.9)
    rows = tf.constant(patches.transforms(where, 20, (28, 28)))
    inv = tf.constant(patches.inverse_transforms(where, 20, (28, 28)))
    weights = tf.constant(rng.random((8, 28, 28, 3), dtype=np.float32))
    with tf.GradientTape() as t1:
        a = patches.overlay(x, tf.concat([patch, mask], -1)[None], rows)
        la = tf.reduce_sum(tf.sin(3 * a) * weights)
    with tf.GradientTape() as t2:
        b = patches.overlay_for_training(x, patch, mask, rows, inv)
        lb = tf.reduce_sum(tf.sin(3 * b) * weights)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    np.testing.assert_allclose(t1.gradient(la, patch).numpy(), t2.gradient(lb, patch).numpy(), rtol=1e-4, atol=1e-4)


def test_windowed_application_equals_full_image_overlay():
    import tensorflow as tf

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (64, 30, 26, 1), dtype=np.uint8)
    ps = patches.PatchSet(rng.random((2, 26, 26, 1), dtype=np.float32), np.stack([patches.make_mask(26, "circle")] * 2),
                          np.array([1, 2]), CLASSES, (30, 26, 1))
    which = rng.integers(0, 2, 64).astype(np.int32)
    where = patches.sample_placements(rng, 64, (30, 26), rotation_max=30, scale_min=0.1, scale_max=1.0)
    out = patches.apply_patches(images, ps, which, where, batch_size=16)
    full = patches.overlay(tf.constant(to_float(images)), tf.gather(ps.canvases(), which),
                           patches.transforms(where, 26, (30, 26))).numpy()
    expected = np.rint(np.clip(full, 0, 1) * 255).astype(np.int16)
    assert np.abs(out.astype(np.int16) - expected).max() <= 1


@pytest.mark.parametrize("shape, rotation", [("square", 0), ("square", 45), ("circle", 45)])
def test_an_enlarged_patch_is_pasted_to_its_last_pixel(shape, rotation):
    """A 6-pixel patch on 48x40 images (up to 6.7 image pixels a patch pixel): the window reaches
    what the bilinear read of the mask's edge reaches (half a patch pixel beyond it), not one image
    pixel only; the paste equals the full-image overlay."""
    import tensorflow as tf

    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (24, 48, 40, 3), dtype=np.uint8)
    ps = patches.PatchSet(rng.random((1, 6, 6, 3), dtype=np.float32), patches.make_mask(6, shape)[None],
                          np.array([1]), CLASSES, (48, 40, 3))
    which = np.zeros(24, np.int32)
    where = patches.sample_placements(rng, 24, (48, 40), rotation_max=rotation, scale_min=0.5, scale_max=1.0)
    out = patches.apply_patches(images, ps, which, where)
    full = patches.overlay(tf.constant(to_float(images)), tf.gather(ps.canvases(), which),
                           patches.transforms(where, 6, (48, 40))).numpy()
    expected = np.rint(np.clip(full, 0, 1) * 255).astype(np.int16)
    assert np.abs(out.astype(np.int16) - expected).max() <= 1


def test_patch_channels_must_match_images():
    with pytest.raises(PatchSetError, match="the patches have 1 channels but the images have 3"):
        patches.apply_patches(np.zeros((1, 28, 28, 3), np.uint8), _patch_set(), np.zeros(1, np.int32), _fixed(1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scale_min=0.5, scale_max=0.5),
         "scale_min must be smaller than scale_max, got scale_min=0.5 and scale_max=0.5"),
        (dict(scale_min=0.6, scale_max=0.5), "scale_min must be smaller than scale_max"),
        (dict(rotation_max=181), r"rotation_max must be in \[0, 180\], got 181"),
        (dict(rotation_max=-1), r"rotation_max must be in \[0, 180\], got -1"),
        (dict(scale_min=0.0), r"scale_min must be in \(0, 1\), got 0.0"),
        (dict(scale_max=1.5), r"scale_max must be in \(0, 1\], got 1.5"),
        (dict(patch_scale=1.5), r"patch_scale must be in \[0, 1\], got 1.5"),
        (dict(patch_location="corner"), "patch_location must be one of 'random', 'center', got 'corner'"),
    ],
)
def test_bad_placement_parameters(kwargs, message):
    base = dict(rotation_max=22.5, scale_min=0.1, scale_max=1.0, patch_location="random", patch_scale=0.0)
    with pytest.raises(ParameterError, match=message):
        params.check(**{**base, **kwargs})


def test_patch_set_round_trip_gives_identical_patched_images(tmp_path):
    rng = np.random.default_rng(0)
    ps = patches.PatchSet(rng.random((3, 28, 28, 3), dtype=np.float32), np.stack([patches.make_mask(28, "circle")] * 3),
                          np.array([1, 5, 7]), CLASSES, (28, 28, 3), settings={"seed": 0}, metrics=[{"a": 1.0}] * 3)
    ps.save(tmp_path / "ps")
    loaded = patches.PatchSet.load(tmp_path / "ps")
    images = rng.integers(0, 256, (20, 28, 28, 3), dtype=np.uint8)
    which = rng.integers(0, 3, 20)
    where = patches.sample_placements(rng, 20, (28, 28), rotation_max=22.5, scale_min=0.2, scale_max=0.6)
    np.testing.assert_array_equal(patches.apply_patches(images, ps, which, where),
                                  patches.apply_patches(images, loaded, which, where))
    manifest = json.loads((tmp_path / "ps" / "patchset.json").read_text())
    assert manifest["targets"] == [1, 5, 7] and len(manifest["previews"]) == 3
    assert all((tmp_path / "ps" / p).is_file() for p in manifest["previews"])


# --------------------------------------------------------------------------- steps


@pytest.fixture(scope="module")
def attack_setup(tmp_path_factory):
    """A tiny trained LeNet and data (module-scoped: training takes seconds)."""
    root = tmp_path_factory.mktemp("attack")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADVPATCH_OUTPUT_DIR", str(root / "outputs"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'outputs' / 'mlflow.db'}")
        steps.load_dataset(dataset=str(root / "train"), source="digits", split="train", max_examples=300, seed=0)
        steps.load_dataset(dataset=str(root / "test"), source="digits", split="test", max_examples=100, seed=0)
        steps.train(training_data=str(root / "train"), model=str(root / "model"), epochs=4, learning_rate=0.003, seed=0)
        yield root


def test_gen_patch_optimizes_and_is_deterministic(attack_setup, tmp_path):
    root = attack_setup
    kw = dict(data=str(root / "train"), model=str(root / "model"), max_iter=60, patch_target=3, num_patch=2,
              num_patch_gen_samples=40, scale_min=0.4, scale_max=0.6, patch_location="center", seed=4)
    result = steps.gen_patch(patches=str(tmp_path / "a"), **kw)
    for r in result.details["per_patch"]:
        assert r["final_loss"] < 0.5 * r["first_loss"]
        assert r["gen_targeted_success_rate"] >= 0.5
    steps.gen_patch(patches=str(tmp_path / "b"), **kw)
    assert (tmp_path / "a" / "patches.npz").read_bytes() == (tmp_path / "b" / "patches.npz").read_bytes()
    steps.gen_patch(patches=str(tmp_path / "c"), **{**kw, "seed": 5})
    assert (tmp_path / "a" / "patches.npz").read_bytes() != (tmp_path / "c" / "patches.npz").read_bytes()


def test_gen_patch_random_targets_and_bad_input(attack_setup, tmp_path):
    root = attack_setup
    gen = dict(data=str(root / "train"), model=str(root / "model"))
    result = steps.gen_patch(**gen, patches=str(tmp_path / "p"), max_iter=2, num_patch=4, patch_target=-1, seed=1)
    ps = patches.PatchSet.load(tmp_path / "p")
    assert len(ps) == 4 and len(set(ps.targets.tolist())) > 1
    assert result.details["targets"] == [CLASSES[t] for t in ps.targets]
    with pytest.raises(ParameterError,
                       match=r"patch_target must be -1 \(random\) or a class index in \[0, 9\], got 10"):
        steps.gen_patch(**gen, patches=str(tmp_path / "q"), patch_target=10)
    with pytest.raises(ParameterError, match="max_iter must be an integer >= 1, got 0"):
        steps.gen_patch(**gen, patches=str(tmp_path / "q"), max_iter=0)
    with pytest.raises(ParameterError, match=r"patch_loss must be one of 'auto', .*, got 'hinge'"):
        steps.gen_patch(**gen, patches=str(tmp_path / "q"), patch_loss="hinge")
    with pytest.raises(ParameterError, match=r"lr_decay must be in \[0, 1\], got -0.1"):
        steps.gen_patch(**gen, patches=str(tmp_path / "q"), lr_decay=-0.1)
    assert not (tmp_path / "q").exists()
    assert ps.settings["loss"] == "combined" and ps.settings["patch_loss"] == "auto"  # random position


@pytest.mark.parametrize("method, rate, expected_total, expected_patched", [
    ("corrupt", 1.0, 100, 100), ("corrupt", 0.25, 100, 25), ("augment", 0.3, 130, 30), ("augment", 0.0, 100, 0)])
def test_deploy_counts_are_exact(attack_setup, tmp_path, method, rate, expected_total, expected_patched):
    root = attack_setup
    _patch_set(targets=(3, 5)).save(tmp_path / "ps")
    result = steps.deploy_patch(data=str(root / "test"), patches=str(tmp_path / "ps"),
                                patched_data=str(tmp_path / "out"),
                                patch_deployment_method=method, patch_application_rate=rate, patch_scale=0.4,
                                batch_size=32, seed=2)
    data = Dataset(tmp_path / "out").load()
    clean = Dataset(root / "test").load()
    assert len(data["y"]) == expected_total and data["patched"].sum() == expected_patched
    assert result.metrics["num_patched"] == expected_patched
    patched = data["patched"]
    # provenance: unpatched rows are the originals, patched rows differ and name their patch
    np.testing.assert_array_equal(data["x"][~patched], clean["x"][data["source_index"][~patched]])
    np.testing.assert_array_equal(data["y"], clean["y"][data["source_index"]])
    if expected_patched:
        assert np.all(data["patch_target"][patched] == np.array([3, 5])[data["patch_index"][patched]])
        assert np.all(data["patch_scale"][patched] == np.float32(0.4))
        assert np.all(np.isnan(data["patch_angle"][~patched]))
        assert result.metrics["l2_mean"] > 0 and 0 < result.metrics["l_inf_max"] <= 1.0
        assert result.metrics["cosine_similarity_max"] <= 1.0 + 1e-9
    if method == "augment":
        assert sorted(data["source_index"][~patched].tolist()) == list(range(100))
    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert manifest["provenance"][-1]["step"] == "deploy_patch"
    assert manifest["provenance"][-1]["patch_deployment_method"] == method


def test_deploy_is_deterministic_and_checks_inputs(attack_setup, tmp_path):
    root = attack_setup
    _patch_set().save(tmp_path / "ps")
    for name in ("a", "b"):
        steps.deploy_patch(data=str(root / "test"), patches=str(tmp_path / "ps"), patched_data=str(tmp_path / name),
                           patch_scale=0,
                           scale_min=0.2, scale_max=0.7, rotation_max=45, seed=9)
    a, b = Dataset(tmp_path / "a").load(), Dataset(tmp_path / "b").load()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    _patch_set(channels=3).save(tmp_path / "rgb")
    c = dict(data=str(root / "test"), patched_data=str(tmp_path / "c"))
    with pytest.raises(PatchSetError, match="the patches have 3 channels but the dataset's images have 1"):
        steps.deploy_patch(**c, patches=str(tmp_path / "rgb"))
    with pytest.raises(ParameterError, match=r"patch_application_rate must be in \[0, 1\], got 1.2"):
        steps.deploy_patch(**c, patches=str(tmp_path / "ps"), patch_application_rate=1.2)
    with pytest.raises(ParameterError, match="patch_deployment_method must be one of 'corrupt', 'augment'"):
        steps.deploy_patch(**c, patches=str(tmp_path / "ps"), patch_deployment_method="x")
    with pytest.raises(PatchSetError, match=r"is not a patch set: patchset\.json is missing"):
        steps.deploy_patch(**c, patches=str(root / "test"))
    assert not (tmp_path / "c").exists()


def test_infer_reports_targeted_success_against_hand_count(attack_setup, tmp_path):
    root = attack_setup
    steps.gen_patch(data=str(root / "train"), patches=str(tmp_path / "ps"), model=str(root / "model"), max_iter=40,
                    patch_target=3, scale_min=0.4, scale_max=0.6, patch_location="center", seed=0)
    steps.deploy_patch(data=str(root / "test"), patches=str(tmp_path / "ps"), patched_data=str(tmp_path / "d"),
                       patch_scale=0.5, patch_application_rate=0.6, patch_location="center", seed=0)
    result = steps.infer(data=str(tmp_path / "d"), predictions=str(tmp_path / "pred.csv"), model=str(root / "model"))
    import csv

    rows = list(csv.DictReader((tmp_path / "pred.csv").read_text().splitlines()))
    patched = [r for r in rows if r["patched"] == "True"]
    eligible = [r for r in patched if r["label"] != r["patch_target"]]
    assert len(patched) == 60
    assert result.metrics["targeted_success_rate"] == pytest.approx(
        sum(r["predicted"] == r["patch_target"] for r in eligible) / len(eligible))
    assert result.metrics["accuracy_patched"] == pytest.approx(sum(r["predicted"] == r["label"] for r in patched) / 60)
    unpatched = [r for r in rows if r["patched"] == "False"]
    assert result.metrics["accuracy_unpatched"] == pytest.approx(
        sum(r["predicted"] == r["label"] for r in unpatched) / 40)
    assert result.metrics["targeted_success_rate"] > 0.3


def test_patch_metrics_by_hand():
    from advpatch.evaluation import patch_metrics

    y = np.array([0, 1, 2, 3, 3, 1])
    pred = np.array([3, 1, 3, 3, 0, 1])
    patched = np.array([True, True, True, True, False, False])
    target = np.array([3, 3, 3, 3, -1, -1])
    m = patch_metrics(y, pred, patched, target)
    # patched: rows 0-3, correct: rows 1, 3 -> 0.5; eligible (label != 3): rows 0, 1, 2 -> hits at 0, 2
    assert m == {"num_patched": 4.0, "accuracy_patched": 0.5, "accuracy_unpatched": 0.5,
                 "targeted_success_rate": pytest.approx(2 / 3)}

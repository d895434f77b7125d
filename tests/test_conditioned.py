"""Placement-conditioned patch sets and the worst-case placement search (issue 23): the library,
and gen_patch's patch_conditioning and deploy_patch's patch_placement."""

import numpy as np
import pytest

from advpatch import patches, steps
from advpatch.data.dataset import Dataset, to_float
from advpatch.params import ParameterError
from advpatch.patches import conditioned as cp

CLASSES = [str(i) for i in range(10)]


def _placements(x, y, scale, angle=0.0):
    f = np.float32
    x = np.asarray(x, f)
    return patches.Placements(np.full(len(x), angle, f), np.broadcast_to(np.asarray(scale, f), x.shape).copy(), x,
                              np.asarray(y, f))


def test_cells_are_a_function_of_the_placement():
    cond = cp.Conditioning("grid", (2, 3))
    assert cond.num_cells == 6
    where = _placements([0, 27, 0, 27, 13.4, 13.6], [0, 0, 27, 27, 13.4, 9.4], 0.3)
    np.testing.assert_array_equal(cond.cells(where, (28, 28)), [0, 1, 4, 5, 2, 3])
    assert cp.Conditioning.from_dict(cond.to_dict()) == cond
    with pytest.raises(ParameterError, match="conditioning mode must be one of 'grid', 'canvas', got 'ring'"):
        cp.Conditioning("ring")


def test_canvas_shows_the_canvas_under_the_mask_and_nothing_else():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    canvas = rng.random((1, 28, 28, 1), dtype=np.float32)
    mask = patches.make_mask(28, "circle")
    where = patches.sample_placements(rng, 16, (28, 28), rotation_max=30, scale_min=0.2, scale_max=0.8, mask=mask)
    out = cp.apply_canvas(images, canvas, mask, np.zeros(16, np.int32), where)
    warped = patches.warp(np.repeat(mask[None, ..., None], 16, 0), patches.transforms(where, 28, (28, 28)),
                          (28, 28)).numpy()
    full = warped >= 1 - 1e-6
    expected = np.rint(canvas[0] * 255).astype(np.uint8)
    assert full.any() and np.all(out[full] == np.broadcast_to(expected, out.shape)[full])
    np.testing.assert_array_equal(out[warped == 0], images[warped == 0])


def test_cell_overlay_gradient_goes_to_each_cells_patch():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = tf.constant(rng.random((12, 28, 28, 1), dtype=np.float32))
    k_patches = tf.Variable(rng.random((3, 20, 20, 1), dtype=np.float32))
    mask = patches.make_mask(20, "circle")
    where = patches.sample_placements(rng, 12, (28, 28), rotation_max=45, scale_min=0.3, scale_max=0.9)
    rows, inv = patches.transforms(where, 20, (28, 28)), patches.inverse_transforms(where, 20, (28, 28))
    cells = tf.constant(rng.integers(0, 3, 12).astype(np.int32))
    w = tf.constant(rng.random((12, 28, 28, 1), dtype=np.float32))
    with tf.GradientTape() as t1:
        canv = tf.concat([tf.gather(k_patches, cells), tf.broadcast_to(mask[None, ..., None], (12, 20, 20, 1))], -1)
        a = patches.overlay(x, canv, rows)
        la = tf.reduce_sum(tf.sin(3 * a) * w)
    with tf.GradientTape() as t2:
        b = cp._overlay_cells(x, k_patches, tf.constant(mask[..., None]), cells, rows, inv)
        lb = tf.reduce_sum(tf.sin(3 * b) * w)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    np.testing.assert_allclose(tf.convert_to_tensor(t1.gradient(la, k_patches)).numpy(),
                               t2.gradient(lb, k_patches).numpy(), atol=1e-4)


def test_conditioning_from_gen_patch_parameters():
    assert cp.for_images("none", 7, (28, 28, 1), 0) == (None, 28)
    assert cp.for_images("grid", 3, (32, 48, 3), 20) == (cp.Conditioning("grid", (3, 3)), 20)
    assert cp.for_images("canvas", 7, (28, 28, 1), 0) == (cp.Conditioning("canvas"), 28)
    with pytest.raises(ParameterError, match="patch_conditioning='canvas' needs square images, got 32x48"):
        cp.for_images("canvas", 7, (32, 48, 3), 0)
    with pytest.raises(ParameterError, match="patch_conditioning='canvas' is image-sized: patch_size must be 0 or "
                                             "28, got 20"):
        cp.for_images("canvas", 7, (28, 28, 1), 20)


def test_worst_case_finds_the_one_winning_position():
    class Corner:  # says 5 only when the pixels around (3, 3) are bright
        def predict(self, x, batch_size=256):
            p = np.full((len(x), 10), 0.01, np.float32)
            p[:, 0] = 0.5
            p[:, 5] = np.where(x[:, 3, 3, 0] > 0.5, 0.9, 0.0)
            return p

    images = np.zeros((6, 28, 28, 1), np.uint8)
    labels = np.zeros(6, np.int32)
    white = patches.PatchSet(np.ones((1, 28, 28, 1), np.float32), patches.make_mask(28, "circle")[None],
                             np.array([5]), CLASSES, (28, 28, 1))
    r = patches.worst_case_success(Corner(), images, labels, white, 0.3, stride=2.0, angles=(0.0, 20.0),
                                   batch_size=100)  # an image's placements span several batches
    assert r["worst_case_targeted_success_rate"] == 1.0 and r["images"] == 6 and r["successes"] == 6
    grid = patches.grid_placements((28, 28), 0.3, stride=2.0, angles=(0.0, 20.0), mask=patches.make_mask(28, "circle"))
    assert r["placements_per_image"] == len(grid) and len(grid) > 200
    centre = patches.apply_patches(images, white, np.zeros(6, np.int32), _placements([13.5] * 6, [13.5] * 6, 0.3))
    assert not (Corner().predict(to_float(centre)).argmax(1) == 5).any()
    found = patches.search_placements(Corner(), images, labels, white, np.zeros(6, np.int32), np.full(6, 0.3),
                                      stride=2.0, angles=(0.0, 20.0))
    again = patches.apply_patches(images, white, np.zeros(6, np.int32), found.placements)
    assert found.won.all() and (Corner().predict(to_float(again)).argmax(1) == 5).all()
    only_centre = patches.grid_placements((28, 28), 0.3, stride=2.0, angles=(0.0,), location="center")
    assert len(only_centre) == 1 and only_centre.x[0] == only_centre.y[0] == 13.5
    np.testing.assert_allclose(patches.search_angles(22.5, 3), [-22.5, 0, 22.5])
    np.testing.assert_allclose(patches.search_angles(22.5, 1), [0])


def test_worst_case_without_a_win_lowers_the_true_class_most():
    class Darkness:  # the true class (0) fades with the patch's brightness at the top-left
        def predict(self, x, batch_size=256):
            p = np.full((len(x), 10), 0.05, np.float32)
            p[:, 0] = 0.6 - 0.5 * x[:, :8, :8, 0].mean(axis=(1, 2))
            return p

    images = np.zeros((2, 28, 28, 1), np.uint8)
    white = patches.PatchSet(np.ones((1, 28, 28, 1), np.float32), np.ones((1, 28, 28), np.float32), np.array([5]),
                             CLASSES, (28, 28, 1))
    found = patches.search_placements(Darkness(), images, np.zeros(2, np.int32), white, np.zeros(2, np.int32),
                                      np.full(2, 8 / 28), stride=1.0, angles=(0.0,))
    assert not found.won.any() and found.misclassified.sum() == 0
    np.testing.assert_allclose(found.placements.x, 3.5)  # an 8-pixel square exactly on the corner's pixels
    np.testing.assert_allclose(found.placements.y, 3.5)


# --------------------------------------------------------------------------- with a trained LeNet


@pytest.fixture(scope="module")
def lenet_digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADVPATCH_OUTPUT_DIR", str(root / "outputs"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'outputs' / 'mlflow.db'}")
        steps.load_dataset(dataset=str(root / "train"), source="digits", split="train", max_examples=300, seed=0)
        steps.load_dataset(dataset=str(root / "test"), source="digits", split="test", max_examples=60, seed=0)
        steps.train(training_data=str(root / "train"), model=str(root / "model"), epochs=4, learning_rate=0.003, seed=0)
        yield root


def _classifier(root):
    from advpatch.models import load_model
    from advpatch.models.classifier import Classifier

    return Classifier(*load_model(str(root / "model")))


def test_one_cell_is_generate_patch(lenet_digits):
    """A 1x1 grid is generate_patch itself: same schedule, same patch."""
    clf = _classifier(lenet_digits)
    x = to_float(Dataset(lenet_digits / "train").load()["x"][:60])
    mask = patches.make_mask(28, "circle")
    kw = dict(max_iter=3, batch_size=20, rotation_max=22.5, scale_min=0.2, scale_max=0.8, location="random")
    plain, h1 = patches.generate_patch(patches.PatchOptimizer(clf, (28, 28, 1), 28, mask, 0.1), x, 5,
                                       rng=np.random.default_rng(4), **kw)
    opt = cp.ConditionedPatchOptimizer(clf, (28, 28, 1), 28, mask, 0.1, cp.Conditioning())
    cond, h2 = cp.generate_conditioned_patch(opt, x, 5, rng=np.random.default_rng(4), **kw)
    np.testing.assert_allclose(cond[0], plain, atol=1e-4)
    np.testing.assert_allclose(h1, h2, rtol=1e-4)


@pytest.mark.parametrize("mode", ["grid", "canvas"])
def test_gen_patch_makes_conditioned_sets_and_deploy_pastes_each_placements_cell(lenet_digits, tmp_path, mode):
    root = lenet_digits
    result = steps.gen_patch(data=str(root / "train"), model=str(root / "model"), patches=str(tmp_path / "ps"),
                             max_iter=2, num_patch=2, num_patch_gen_samples=20, batch_size=20, patch_target=5,
                             patch_shape="circle", patch_conditioning=mode, patch_grid_size=2, seed=0)
    ps = patches.PatchSet.load(tmp_path / "ps")
    cond = patches.conditioning_of(ps)
    cells = 4 if mode == "grid" else 1
    assert cond == cp.Conditioning(mode, (2, 2) if mode == "grid" else (1, 1))
    assert len(ps) == 2 * cells and ps.patch_size == 28 and ps.settings["loss"] == "success"  # auto, conditioned
    assert len(result.details["previews"]) == 2 and len(result.details["per_patch"]) == 2
    steps.deploy_patch(data=str(root / "test"), patches=str(tmp_path / "ps"), patched_data=str(tmp_path / "out"),
                       patch_scale=0.4, seed=1)
    data = Dataset(tmp_path / "out").load()
    clean = Dataset(root / "test").load()
    p = data["patched"]
    where = patches.Placements(data["patch_angle"][p], data["patch_scale"][p], data["patch_x"][p], data["patch_y"][p])
    np.testing.assert_array_equal(data["patch_index"][p] % cells, cond.cells(where, (28, 28)))
    assert len(set((data["patch_index"][p] // cells).tolist())) == 2  # both sets drawn
    again = patches.apply_set(clean["x"][data["source_index"][p]], patches.PatchSet.load(tmp_path / "ps"),
                              data["patch_index"][p] // cells, where)
    np.testing.assert_array_equal(data["x"][p], again)


def test_an_ordinary_patch_set_deploys_as_before(lenet_digits, tmp_path):
    """deploy_patch's output for an ordinary set, against the draws and application it has always
    made (same generator calls in the same order, then apply_patches)."""
    root = lenet_digits
    rng = np.random.default_rng(0)
    ps = patches.PatchSet(rng.random((3, 20, 20, 1), dtype=np.float32), np.stack([patches.make_mask(20, "circle")] * 3),
                          np.array([1, 5, 7]), CLASSES, (28, 28, 1))
    ps.save(tmp_path / "ps")
    steps.deploy_patch(data=str(root / "test"), patches=str(tmp_path / "ps"), patched_data=str(tmp_path / "out"),
                       patch_scale=0, scale_min=0.2, scale_max=0.7, rotation_max=45, patch_application_rate=0.5,
                       batch_size=16, seed=9)
    clean = Dataset(root / "test").load()["x"]
    n = len(clean)
    r = np.random.default_rng(9)
    chosen = np.zeros(n, bool)
    chosen[r.permutation(n)[:n // 2]] = True
    which = r.integers(0, 3, n).astype(np.int16)
    where = patches.sample_placements(r, n, (28, 28), rotation_max=45, scale_min=0.2, scale_max=0.7,
                                      location="random", patch_scale=0, mask=ps.masks.max(axis=0))
    expected = clean.copy()
    expected[chosen] = patches.apply_patches(clean[chosen], ps, which[chosen], where.take(chosen))
    out = Dataset(tmp_path / "out").load()
    np.testing.assert_array_equal(out["x"], expected)
    np.testing.assert_array_equal(out["patch_index"], np.where(chosen, which, -1))
    np.testing.assert_array_equal(out["patch_x"][chosen], where.x[chosen])


def test_deploy_worst_case_chooses_and_records_each_placement(lenet_digits, tmp_path):
    root = lenet_digits
    steps.gen_patch(data=str(root / "train"), model=str(root / "model"), patches=str(tmp_path / "ps"), max_iter=5,
                    patch_target=5, patch_shape="circle", seed=0)
    kw = dict(data=str(root / "test"), patches=str(tmp_path / "ps"), patch_scale=0.4, seed=3)
    steps.deploy_patch(**kw, patched_data=str(tmp_path / "random"))
    result = steps.deploy_patch(**kw, patched_data=str(tmp_path / "worst"), patch_placement="worst_case",
                                model=str(root / "model"), worst_case_stride=4)
    clf = _classifier(root)
    rand, worst = Dataset(tmp_path / "random").load(), Dataset(tmp_path / "worst").load()
    np.testing.assert_array_equal(rand["patch_scale"], worst["patch_scale"])  # same images, patches and scales
    assert not np.array_equal(rand["patch_x"], worst["patch_x"])
    assert set(np.unique(worst["patch_angle"]).tolist()) <= {-22.5, 0.0, 22.5}
    eligible = worst["y"] != 5
    hits = clf.predict_labels(to_float(worst["x"])) == 5
    assert hits[eligible].mean() >= (clf.predict_labels(to_float(rand["x"])) == 5)[eligible].mean()
    assert result.metrics["worst_case_num_won"] == hits.sum()
    record = Dataset(tmp_path / "worst").spec.provenance[-1]
    assert record["patch_placement"] == "worst_case" and record["worst_case_angles"] == [-22.5, 0.0, 22.5]
    assert "patch_placement" not in Dataset(tmp_path / "random").spec.provenance[-1]
    # against a defence: the search sees the defended classifier and says so
    defended = steps.deploy_patch(**kw, patched_data=str(tmp_path / "smoothed"), patch_placement="worst_case",
                                  model=str(root / "model"), worst_case_stride=8, worst_case_angles=1,
                                  defence="spatial_smoothing", spatial_smoothing_window_size=3)
    assert Dataset(tmp_path / "smoothed").spec.provenance[-1]["defence"] == "spatial_smoothing"
    assert set(np.unique(Dataset(tmp_path / "smoothed").load()["patch_angle"]).tolist()) == {0.0}
    assert defended.metrics["num_patched"] == 60


def test_placement_and_conditioning_bad_input(lenet_digits, tmp_path):
    root = lenet_digits
    patches.PatchSet(np.ones((1, 28, 28, 1), np.float32), np.ones((1, 28, 28), np.float32), np.array([5]), CLASSES,
                     (28, 28, 1)).save(tmp_path / "ps")
    d = dict(data=str(root / "test"), patches=str(tmp_path / "ps"), patched_data=str(tmp_path / "out"))
    with pytest.raises(ParameterError, match="patch_placement='worst_case' searches each image's placement against a "
                                             "model: give the model input"):
        steps.deploy_patch(**d, patch_placement="worst_case")
    with pytest.raises(ParameterError, match="a model is used only by patch_placement='worst_case'"):
        steps.deploy_patch(**d, model=str(root / "model"))
    with pytest.raises(ParameterError, match="defence='jpeg_compression' is what the worst-case search attacks: it "
                                             "needs patch_placement='worst_case', got patch_placement='random'"):
        steps.deploy_patch(**d, defence="jpeg_compression")
    with pytest.raises(ParameterError, match="patch_placement must be one of 'random', 'worst_case', got 'best'"):
        steps.deploy_patch(**d, patch_placement="best")
    with pytest.raises(ParameterError, match="worst_case_stride must be an integer in"):
        steps.deploy_patch(**d, patch_placement="worst_case", model=str(root / "model"), worst_case_stride=0)
    assert not (tmp_path / "out").exists()
    g = dict(data=str(root / "train"), model=str(root / "model"), patches=str(tmp_path / "q"))
    with pytest.raises(ParameterError, match="patch_conditioning must be one of 'none', 'canvas', 'grid', got 'tile'"):
        steps.gen_patch(**g, patch_conditioning="tile")
    with pytest.raises(ParameterError, match="patch_grid_size must be an integer in"):
        steps.gen_patch(**g, patch_conditioning="grid", patch_grid_size=0)
    with pytest.raises(ParameterError, match="'canvas' is image-sized: patch_size must be 0 or 28, got 14"):
        steps.gen_patch(**g, patch_conditioning="canvas", patch_size=14)
    assert not (tmp_path / "q").exists()
    bad = patches.PatchSet(np.ones((3, 28, 28, 1), np.float32), np.ones((3, 28, 28), np.float32), np.full(3, 5),
                           CLASSES, (28, 28, 1), {"conditioning": {"mode": "grid", "grid": [2, 2]}})
    bad.save(tmp_path / "bad")
    with pytest.raises(patches.PatchSetError, match="do not make grid sets of 4 cells"):
        steps.deploy_patch(**{**d, "patches": str(tmp_path / "bad")})

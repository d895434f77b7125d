import numpy as np
import pytest
from conftest import digits, small_split, write_idx, write_png_folder
from PIL import Image

from advpatch.data.dataset import Dataset
from advpatch.data.sources import SourceError, embedded_digits, import_dataset
from advpatch.params import ParameterError


def test_embedded_digits_are_framed_like_mnist_with_a_fixed_split():
    xtr, _, names = embedded_digits("train")
    xte, yte, _ = embedded_digits("test")
    assert names == [str(i) for i in range(10)]
    assert xtr.shape[1:] == (28, 28, 1) and xtr.dtype == np.uint8
    assert len(xtr) + len(xte) == 1797 and 350 <= len(xte) <= 370
    # the digit sits in the central 20x20: a 4-pixel empty margin
    for x in (xtr, xte):
        assert x[:, :4].max() == 0 and x[:, 24:].max() == 0 and x[:, :, :4].max() == 0 and x[:, :, 24:].max() == 0
        assert x[:, 4:24, 4:24].max() == 255
    # train and test are disjoint and stratified
    assert not (set(map(bytes, xtr)) & set(map(bytes, xte)))
    assert set(np.bincount(yte)) <= {35, 36, 37}
    np.testing.assert_array_equal(embedded_digits("test")[0], xte)


def test_digits_source_with_resize_rgb_and_subset(tmp_path):
    spec = import_dataset("digits", tmp_path / "d", split="test", image_size=32, color_mode="rgb",
                          max_examples=50, seed=3)
    ds = Dataset(tmp_path / "d")
    assert spec.image_shape == (32, 32, 3) and len(ds) == 50
    data = ds.load()
    np.testing.assert_array_equal(data["x"][..., 0], data["x"][..., 2])
    import_dataset("digits", tmp_path / "e", split="test", image_size=32, color_mode="rgb", max_examples=50, seed=3)
    np.testing.assert_array_equal(Dataset(tmp_path / "e").load()["x"], data["x"])
    assert ds.spec.provenance[0]["step"] == "load_dataset" and ds.spec.provenance[0]["seed"] == 3


def test_mnist_layout_of_png_class_folders(tmp_path):
    xtr, ytr, _ = digits("train")
    xtr, ytr = small_split(xtr, ytr, 3)
    xte, yte, _ = digits("test")
    xte, yte = small_split(xte, yte, 2)
    write_png_folder(tmp_path / "Mnist" / "training", xtr, ytr)
    write_png_folder(tmp_path / "Mnist" / "testing", xte, yte)
    import_dataset(str(tmp_path / "Mnist"), tmp_path / "train", split="train")
    import_dataset(str(tmp_path / "Mnist"), tmp_path / "test", split="test")
    train, test = Dataset(tmp_path / "train"), Dataset(tmp_path / "test")
    assert (len(train), len(test)) == (30, 20)
    assert train.image_shape == (28, 28, 1) and train.class_names == [str(i) for i in range(10)]
    data = train.load()
    order = np.argsort(ytr, kind="stable")
    np.testing.assert_array_equal(data["x"], xtr[order])  # PNG is lossless
    np.testing.assert_array_equal(data["y"], ytr[order])


def test_rgb_jpeg_folder_resized(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(6, 40, 30, 3), dtype=np.uint8)
    y = np.array([0, 0, 1, 1, 2, 2])
    write_png_folder(tmp_path / "fruits", x, y, ext=".jpg")
    spec = import_dataset(str(tmp_path / "fruits"), tmp_path / "d", split="all", image_size=16)
    assert spec.image_shape == (16, 16, 3) and spec.num_examples == 6
    spec = import_dataset(str(tmp_path / "fruits"), tmp_path / "g", split="all", color_mode="grayscale")
    assert spec.image_shape == (40, 30, 1)


def test_fruits360_layout_training_and_test_folders_with_class_names_with_spaces(tmp_path):
    """Kaggle's Fruits360: Training/ and Test/ (capitalised), class folders such as 'Apple Braeburn'."""
    rng = np.random.default_rng(1)
    for split, n in (("Training", 4), ("Test", 2)):
        for name in ("Apple Braeburn", "Banana", "Cherry Rainier"):
            folder = tmp_path / "fruits-360" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(folder / f"{i}_100.jpg")
    (tmp_path / "fruits-360" / "readme.txt").write_text("not a class")
    from advpatch.data.sources import class_names

    assert class_names(str(tmp_path / "fruits-360"), "train") == ["Apple Braeburn", "Banana", "Cherry Rainier"]
    train = import_dataset(str(tmp_path / "fruits-360"), tmp_path / "train", split="train")
    test = import_dataset(str(tmp_path / "fruits-360"), tmp_path / "test", split="test")
    assert (train.num_examples, test.num_examples) == (12, 6) and train.image_shape == (100, 100, 3)
    assert train.class_names == test.class_names == ["Apple Braeburn", "Banana", "Cherry Rainier"]


def test_mixed_sizes_need_image_size(tmp_path):
    from PIL import Image

    for i, size in enumerate([(10, 10), (12, 12)]):
        (tmp_path / "src" / "a").mkdir(parents=True, exist_ok=True)
        Image.new("L", size).save(tmp_path / "src" / "a" / f"{i}.png")
    with pytest.raises(SourceError, match="set image_size"):
        import_dataset(str(tmp_path / "src"), tmp_path / "d", split="all")
    assert not (tmp_path / "d").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]
    import_dataset(str(tmp_path / "src"), tmp_path / "d", split="all", image_size=11)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    x, y, _ = digits("test")
    x, y = x[:17], y[:17]
    write_idx(tmp_path / "raw", "t10k", x, y, gz=gz)
    write_idx(tmp_path / "raw", "train", x[:5], y[:5], gz=gz)
    import_dataset(str(tmp_path / "raw"), tmp_path / "d", split="test")
    data = Dataset(tmp_path / "d").load()
    np.testing.assert_array_equal(data["x"], x)
    np.testing.assert_array_equal(data["y"], y)
    import_dataset(str(tmp_path / "raw"), tmp_path / "e", split="train")
    assert len(Dataset(tmp_path / "e")) == 5


def test_truncated_idx_is_refused(tmp_path):
    x, y, _ = digits("test")
    write_idx(tmp_path / "raw", "t10k", x[:4], y[:4], gz=False)
    f = tmp_path / "raw" / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(SourceError, match="truncated"):
        import_dataset(str(tmp_path / "raw"), tmp_path / "d", split="test")


def test_npz_keras_layout_and_xy(tmp_path):
    x, y, _ = digits("test")
    np.savez(tmp_path / "mnist.npz", x_train=x[:10, ..., 0], y_train=y[:10], x_test=x[10:16, ..., 0], y_test=y[10:16])
    import_dataset(str(tmp_path / "mnist.npz"), tmp_path / "tr", split="train")
    import_dataset(str(tmp_path / "mnist.npz"), tmp_path / "te", split="test")
    assert (len(Dataset(tmp_path / "tr")), len(Dataset(tmp_path / "te"))) == (10, 6)
    np.testing.assert_array_equal(Dataset(tmp_path / "te").load()["x"], x[10:16])
    np.savez(tmp_path / "xy.npz", x=x[:4].astype(np.float32) / 255.0, y=y[:4])
    import_dataset(str(tmp_path / "xy.npz"), tmp_path / "xy", split="all")
    np.testing.assert_array_equal(Dataset(tmp_path / "xy").load()["x"], x[:4])


def test_npz_with_objects_is_refused(tmp_path):
    np.savez(tmp_path / "evil.npz", x=np.array([object()], dtype=object), y=np.array([0]))
    with pytest.raises(SourceError):
        import_dataset(str(tmp_path / "evil.npz"), tmp_path / "d", split="all")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "has no class subfolders"),
        (lambda p: (p / "cat").mkdir(parents=True), "no images"),
        (lambda p: ((p / "cat").mkdir(parents=True), (p / "cat" / "x.png").write_bytes(b"not a png")),
         "cannot read image"),
    ],
    ids=["missing", "empty", "no-images", "unreadable"],
)
def test_bad_folders_fail_with_clear_errors_and_no_artifact(tmp_path, setup, message):
    src = tmp_path / "src"
    setup(src)
    with pytest.raises(SourceError, match=message):
        import_dataset(str(src), tmp_path / "out", split="all")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_bad_parameters_fail_before_reading(tmp_path):
    with pytest.raises(ParameterError, match="split must be one of"):
        import_dataset("digits", tmp_path / "d", split="validation")
    with pytest.raises(ParameterError, match="image_size must be an integer in"):
        import_dataset("digits", tmp_path / "d", image_size=-1)
    with pytest.raises(ParameterError, match="source must be 'digits', a folder"):
        import_dataset("", tmp_path / "d")


def test_rgb_pictures_give_the_same_grey_from_a_file_or_from_arrays(tmp_path):
    """One definition of the grey level (PIL's ITU-R 601-2 integer luma) for every source."""
    from PIL import Image

    from advpatch.data.readers import to_grayscale

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 9, 7, 3), dtype=np.uint8)
    y = np.array([0, 1, 0, 1, 0, 1])
    expected = np.stack([np.asarray(Image.fromarray(img).convert("L")) for img in x])[..., None]
    np.testing.assert_array_equal(to_grayscale(x), expected)
    write_png_folder(tmp_path / "pngs", x, y)
    np.savez(tmp_path / "rgb.npz", x=x, y=y)
    import_dataset(str(tmp_path / "pngs"), tmp_path / "a", split="all", color_mode="grayscale")
    import_dataset(str(tmp_path / "rgb.npz"), tmp_path / "b", split="all", color_mode="grayscale")
    a, b = Dataset(tmp_path / "a").load(), Dataset(tmp_path / "b").load()
    order = np.argsort(y, kind="stable")  # the folder is read class by class
    np.testing.assert_array_equal(a["x"], b["x"][order])
    np.testing.assert_array_equal(b["x"], expected)


def test_a_dataset_a_step_wrote_is_a_source_with_its_columns_and_provenance(tmp_path):
    from advpatch.data.writer import write_dataset

    x, y, _ = digits("test")
    cols = {"patched": np.arange(20) % 2 == 0, "patch_target": np.full(20, 5, np.int16)}
    write_dataset(tmp_path / "patched", x[:20], y[:20], [str(i) for i in range(10)], columns=cols,
                  provenance=[{"step": "deploy_patch"}], shard_bytes=28 * 28 * 6)
    spec = import_dataset(str(tmp_path / "patched"), tmp_path / "copy", max_examples=8, seed=1, image_size=14,
                          color_mode="rgb")
    data = Dataset(tmp_path / "copy").load()
    keep = np.sort(np.random.default_rng(1).choice(20, 8, replace=False))
    assert spec.image_shape == (14, 14, 3) and len(data["y"]) == 8
    np.testing.assert_array_equal(data["y"], y[:20][keep])
    np.testing.assert_array_equal(data["patched"], cols["patched"][keep])
    assert [p["step"] for p in spec.provenance] == ["deploy_patch", "load_dataset"]


def test_a_class_folder_lists_its_image_files_sorted_and_nothing_else(tmp_path):
    """The listing reads each class folder once (no ``stat`` per file) and keeps what a path-by-path
    listing keeps: files (and links to files) with an image suffix in any case, sorted by name;
    not other files, hidden names without a suffix, or a folder whose name ends in .jpg."""
    from advpatch.data.readers import IMAGE_SUFFIXES, list_image_folder

    root = tmp_path / "images"
    for cls in ("b", "a"):
        (root / cls).mkdir(parents=True)
        for name in ("z.png", "B.JPG", "a.jpeg", "10.Png", "2.png", "notes.txt", ".jpg", "x.tar"):
            (root / cls / name).write_bytes(b"")
        (root / cls / "dir.jpg").mkdir()
        (root / cls / "link.png").symlink_to(root / cls / "z.png")
        (root / cls / "dangling.png").symlink_to(root / cls / "missing.png")
    (root / ".hidden").mkdir()
    files, classes = list_image_folder(root)
    assert classes == ["a", "b"]
    by_path = [(f, label) for label, cls in enumerate(classes)
               for f in sorted(p for p in (root / cls).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)]
    assert files == by_path
    assert [f.name for f, _ in files[:6]] == ["10.Png", "2.png", "B.JPG", "a.jpeg", "link.png", "z.png"]

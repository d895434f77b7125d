"""S3 data and MLflow tracking against real servers on 127.0.0.1: SeaweedFS and `mlflow server`."""

import json

import numpy as np
import pytest
from conftest import S3_SECRET_KEY, free_port

from advpatch.data.dataset import Dataset
from advpatch.data.sources import import_dataset
from advpatch.errors import StorageInputError
from advpatch.io import storage


def _objects(endpoint, bucket, prefix):
    from conftest import S3_ACCESS_KEY
    from minio import Minio

    client = Minio(endpoint.split("//")[1], access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False)
    return sorted(o.object_name for o in client.list_objects(bucket, prefix=prefix, recursive=True))


def test_upload_and_load_a_dataset_from_s3(s3_env, mnist_folder, tmp_path):
    _, bucket = s3_env
    names = storage.upload(mnist_folder, f"s3://{bucket}/datasets/mnist")
    assert len(names) == 380 and all(n.startswith("datasets/mnist/") for n in names)
    spec = import_dataset(f"s3://{bucket}/datasets/mnist", tmp_path / "train", split="train")
    import_dataset(str(mnist_folder), tmp_path / "local", split="train")
    assert spec.num_examples == 300 and spec.provenance[0]["source"] == f"s3://{bucket}/datasets/mnist"
    np.testing.assert_array_equal(Dataset(tmp_path / "train").load()["x"], Dataset(tmp_path / "local").load()["x"])
    manifest = json.loads((tmp_path / "train" / "dataset.json").read_text())
    assert manifest["provenance"][0]["source"].startswith("s3://")
    # a single .npz object
    np.savez(tmp_path / "small.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 0, 1]))
    storage.upload(tmp_path / "small.npz", f"s3://{bucket}/datasets")
    spec = import_dataset(f"s3://{bucket}/datasets/small.npz", tmp_path / "npz", split="all")
    assert spec.num_examples == 4 and spec.image_shape == (8, 8, 1)


def test_a_prefix_is_a_folder_not_the_start_of_a_name(s3_env, tmp_path):
    """s3://b/sets/mnist never picks up s3://b/sets/mnist-e2e/... beside it."""
    _, bucket = s3_env
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("1")
    storage.upload(tmp_path / "a", f"s3://{bucket}/sets/mnist")
    storage.upload(tmp_path / "a", f"s3://{bucket}/sets/mnist-e2e")
    storage.upload(tmp_path / "a" / "one.txt", f"s3://{bucket}/sets/mnist-e2e/deeper")
    got = storage.download(f"s3://{bucket}/sets/mnist", tmp_path / "down")
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == ["one.txt"]
    with pytest.raises(StorageInputError, match="no objects under"):
        storage.download(f"s3://{bucket}/sets/mnis", tmp_path / "none")


def test_wrong_credentials_fail_fast_without_leaking_them(s3_env, monkeypatch, tmp_path):
    _, bucket = s3_env
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key-42")
    with pytest.raises(StorageInputError, match="rejected the S3 credentials") as err:
        storage.download(f"s3://{bucket}/datasets/mnist", tmp_path)
    assert "not-the-secret-key-42" not in str(err.value) and S3_SECRET_KEY not in str(err.value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(StorageInputError, match="rejected the S3 credentials"):
        storage.download(f"s3://{bucket}/datasets/mnist", tmp_path)


def test_missing_bucket_prefix_endpoint_and_settings(s3_env, monkeypatch, tmp_path):
    _, bucket = s3_env
    with pytest.raises(StorageInputError, match="bucket 'no-such-bucket' does not exist"):
        storage.download("s3://no-such-bucket/x", tmp_path)
    with pytest.raises(StorageInputError, match="no objects under"):
        storage.download(f"s3://{bucket}/nothing/here", tmp_path)
    with pytest.raises(StorageInputError, match="must look like s3://bucket/prefix"):
        storage.download("s3:///nobucket", tmp_path)
    monkeypatch.setenv("ADVPATCH_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    # test_faults_s3 times the real ones
    monkeypatch.setattr(storage, "RETRY_DELAYS_S", (0.1,) * (storage.ATTEMPTS - 1))
    with pytest.raises(storage.StorageError, match="cannot reach the S3 endpoint"):
        storage.download(f"s3://{bucket}/datasets/mnist", tmp_path)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageInputError, match="S3 credentials missing"):
        storage.download(f"s3://{bucket}/datasets/mnist", tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.pipeline
def test_pipeline_with_s3_data_and_an_mlflow_server_storing_artifacts_in_s3(s3_env, mlflow_server, mnist_folder,
                                                                          tmp_path, monkeypatch):
    import mlflow

    from advpatch.app import cli

    endpoint, bucket = s3_env
    storage.upload(mnist_folder, f"s3://{bucket}/datasets/mnist-e2e")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail fast, not after minutes of back-off
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "mnist-patch", "-p", f"data_dir=s3://{bucket}/datasets/mnist-e2e", "-p", "epochs=3",
                     "-p", "max_iter=20", "-p", "experiment_name=s3-e2e"]) == 0
    results = json.loads((tmp_path / "outputs" / "run" / "results.json").read_text())
    assert results["evaluations"][0]["num_examples"] == 80
    assert not (tmp_path / "outputs" / "mlflow").exists()  # tracking went to the server
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("s3-e2e")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`advpatch.kind` = 'pipeline'")
    assert client.get_registered_model("s3-e2e_le_net").latest_versions
    objects = _objects(endpoint, bucket, "mlflow/")
    assert any(o.endswith(f"{parent.info.run_id}/artifacts/results.json") for o in objects)
    assert any(o.endswith("adv_testing.tar") for o in objects)
    assert any(o.endswith("model.keras") or o.endswith("data/model.keras") for o in objects), objects[:20]
    assert any("/patches/" in o and o.endswith(".png") for o in objects)

"""S3-compatible object storage (MinIO, SeaweedFS, AWS S3) through the ``minio`` SDK.

Configuration comes from the environment, never from parameters, so no key reaches a pipeline
spec or a log:

``ADVPATCH_S3_ENDPOINT`` (else ``MLFLOW_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL``)
    ``http://host:port`` or ``https://host:port``; the scheme decides TLS.
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``
    On a cluster they come from the ``mlpipeline-minio-artifact`` secret (see manifests/).
``ADVPATCH_S3_REGION``
    Optional.

Calls fail fast with a message naming the endpoint and what went wrong: unreachable endpoint (a
3 s connect timeout, one retry), rejected credentials, missing bucket or prefix.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import List, Tuple
from urllib.parse import urlparse

from advpatch import settings
from advpatch.errors import AdvpatchError

CREDENTIAL_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken"}


class StorageError(AdvpatchError):
    """Object storage could not be used; the message says why (never with a secret)."""


def parse_uri(uri: str) -> Tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix``)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"an S3 location must look like s3://bucket/prefix, got {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def endpoint() -> str:
    for var in settings.S3_ENDPOINT_VARS:
        if os.environ.get(var):
            return os.environ[var]
    raise StorageError(f"no S3 endpoint configured: set {settings.ENV_S3_ENDPOINT} (e.g. http://seaweedfs.kubeflow:9000)")


def client():
    """A minio client for :func:`endpoint`, with short timeouts."""
    import urllib3
    from minio import Minio

    url = urlparse(endpoint())
    if url.scheme not in ("http", "https") or not url.netloc:
        raise StorageError(f"the S3 endpoint must be http(s)://host[:port], got {endpoint()!r}")
    access, secret = os.environ.get(settings.ENV_S3_ACCESS_KEY, ""), os.environ.get(settings.ENV_S3_SECRET_KEY, "")
    if not access or not secret:
        raise StorageError(f"S3 credentials missing: set {settings.ENV_S3_ACCESS_KEY} and {settings.ENV_S3_SECRET_KEY}")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=3.0, read=60.0),
        retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
    )
    return Minio(url.netloc, access_key=access, secret_key=secret, secure=url.scheme == "https",
                 region=os.environ.get(settings.ENV_S3_REGION) or None, http_client=http)


def _explain(e: Exception, bucket: str) -> StorageError:
    from minio.error import S3Error

    where = endpoint()
    if isinstance(e, S3Error):
        if e.code == "NoSuchBucket":
            return StorageError(f"bucket {bucket!r} does not exist at {where}")
        if e.code in CREDENTIAL_CODES:
            return StorageError(f"{where} rejected the S3 credentials ({e.code}): check {settings.ENV_S3_ACCESS_KEY} "
                                f"and {settings.ENV_S3_SECRET_KEY} (the mlpipeline-minio-artifact secret on a cluster)")
        return StorageError(f"S3 error at {where} on bucket {bucket!r}: {e.code}")
    return StorageError(f"cannot reach the S3 endpoint {where}: {type(e).__name__}")


def _call(fn, bucket: str):
    import urllib3
    from minio.error import S3Error

    try:
        return fn()
    except (S3Error, urllib3.exceptions.HTTPError, OSError) as e:
        raise _explain(e, bucket) from None


def download(uri: str, dest: os.PathLike | str) -> Path:
    """Copy every object under ``uri`` into ``dest`` (keeping relative paths); returns the local
    path that corresponds to ``uri`` (a file when ``uri`` names one object)."""
    bucket, prefix = parse_uri(uri)
    c = client()
    dest = Path(dest)
    listed = _call(lambda: [o for o in c.list_objects(bucket, prefix=prefix, recursive=True) if not o.is_dir],
                   bucket)
    # "s3://b/datasets/mnist" is that object, or the objects under "datasets/mnist/": never
    # "datasets/mnist-e2e/..." beside it
    single = any(o.object_name == prefix for o in listed)
    folder = prefix.rstrip("/") + "/" if prefix else ""
    objects = [o for o in listed if o.object_name == prefix] if single else \
        [o for o in listed if o.object_name.startswith(folder)]
    if not objects:
        raise StorageError(f"no objects under {uri} at {endpoint()}")
    base = PurePosixPath(prefix).parent if single else PurePosixPath(prefix)
    for obj in objects:
        rel = PurePosixPath(obj.object_name).relative_to(base) if str(base) not in ("", ".") else PurePosixPath(obj.object_name)
        if rel.is_absolute() or ".." in rel.parts:
            raise StorageError(f"refusing object {obj.object_name!r}: it would land outside {dest}")
        target = dest.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        _call(lambda: c.fget_object(bucket, obj.object_name, str(target)), bucket)
    return dest / PurePosixPath(prefix).name if single else dest


def upload(src: os.PathLike | str, uri: str) -> List[str]:
    """Copy a file, or every file under a folder, to ``uri``; returns the object names."""
    bucket, prefix = parse_uri(uri)
    c = client()
    src = Path(src)
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise StorageError(f"nothing to upload at {src}")
    names = []
    for f in files:
        rel = f.name if src.is_file() else f.relative_to(src).as_posix()
        name = f"{prefix.rstrip('/')}/{rel}" if prefix else rel
        _call(lambda: c.fput_object(bucket, name, str(f)), bucket)
        names.append(name)
    return names

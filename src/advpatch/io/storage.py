"""S3-compatible object storage (MinIO, SeaweedFS, AWS S3) through the ``minio`` SDK.

Configuration comes from the environment, never from parameters, so no key reaches a pipeline
spec or a log:

``ADVPATCH_S3_ENDPOINT`` (else ``MLFLOW_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL``)
    ``http://host:port`` or ``https://host:port``; the scheme decides TLS.
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``
    On a cluster they come from the ``mlpipeline-minio-artifact`` secret (see manifests/).
``ADVPATCH_S3_REGION``
    Optional.

Failures are reported as :class:`StorageError`, naming the endpoint and what went wrong, never a
key. Rejected credentials, a missing bucket or prefix fail at once. Transient failures (connection
refused, reset or cut mid-transfer, a timeout, HTTP 500/502/503/504) are retried: each object (and
the listing) gets 5 tries (:data:`ATTEMPTS`), 1, 3, 9 and 20 s apart (:data:`RETRY_DELAYS_S`), each
with a 3 s connect and a 10 s read timeout. That rides out a restart of the object store itself
(its pod, or a busy machine's SeaweedFS answering HTTP 500 until it is ready, which took over 5 s
here), so that a step does not lose its work to it; an operation gives up about 33 s after the
server starts refusing or failing, at most about 100 s after it stops answering.

Nothing half-transferred is left behind:

* :func:`download` fetches into a temporary folder beside ``dest`` and moves the files into
  ``dest`` only once every object has arrived complete: a failed download leaves ``dest`` as it was.
* :func:`upload` writes each object with one PUT, or (over 5 MiB) a multipart upload that the SDK
  aborts on failure: S3 shows an object only once complete, so an object is never partial. An
  upload cut off before the SDK could abort it is aborted once a retry succeeds; if the server
  stays unreachable it stays, invisible, until a bucket lifecycle rule removes it. A folder goes
  file by file with ``dataset.json`` files last, so a folder cut off midway is not a valid
  dataset; the error says how many files went up, and running the same upload again completes it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple, TypeVar
from urllib.parse import urlparse

from advpatch import settings
from advpatch.errors import StorageError, StorageInputError

if TYPE_CHECKING:
    from minio import Minio

CREDENTIAL_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken"}
RETRY_DELAYS_S = (1.0, 3.0, 9.0, 20.0)  # waits before the 2nd, 3rd, 4th and 5th attempt
ATTEMPTS = len(RETRY_DELAYS_S) + 1  # per object, and for the listing
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 3.0, 10.0  # per attempt; the read timeout bounds a silence, not a transfer
TRANSIENT_STATUS = (500, 502, 503, 504)
LAST = "dataset.json"  # advpatch.data.dataset.MANIFEST: uploaded after the rest of its folder



def parse_uri(uri: str) -> Tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix``)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageInputError(f"an S3 location must look like s3://bucket/prefix, got {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def endpoint() -> str:
    for var in settings.S3_ENDPOINT_VARS:
        if os.environ.get(var):
            return os.environ[var]
    raise StorageInputError(f"no S3 endpoint configured: set {settings.ENV_S3_ENDPOINT} (e.g. http://seaweedfs.kubeflow.svc:8333)")


def check_settings() -> Tuple[str, str, str]:
    """The endpoint, access key and secret key from the environment; a :class:`StorageError` when one
    is missing or the endpoint is not a URL (checked before a local run's first task too)."""
    url = urlparse(endpoint())
    if url.scheme not in ("http", "https") or not url.netloc:
        raise StorageInputError(f"the S3 endpoint must be http(s)://host[:port], got {endpoint()!r}")
    access = os.environ.get(settings.ENV_S3_ACCESS_KEY, "")
    secret = os.environ.get(settings.ENV_S3_SECRET_KEY, "")
    if not access or not secret:
        raise StorageInputError(f"S3 credentials missing: set {settings.ENV_S3_ACCESS_KEY} and "
                                f"{settings.ENV_S3_SECRET_KEY}")
    return endpoint(), access, secret


def client() -> Minio:
    """A minio client for :func:`endpoint`, with short timeouts."""
    import urllib3
    from minio import Minio

    where, access, secret = check_settings()
    url = urlparse(where)
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
                               retries=False, maxsize=10)  # _retry counts the attempts; 3 parts go at once
    return Minio(url.netloc, access_key=access, secret_key=secret, secure=url.scheme == "https",
                 region=os.environ.get(settings.ENV_S3_REGION) or None, http_client=http)


def _status(e: BaseException) -> Optional[int]:
    """The HTTP status of a minio error (InvalidResponseError: a non-XML answer, e.g. from a proxy)."""
    status: Optional[int] = getattr(e, "status_code", None) or getattr(getattr(e, "response", None), "status", None) \
        or getattr(e, "_code", None)
    return status


def _cause(e: BaseException) -> str:
    """``ProtocolError (ConnectionResetError)``: types down to the OS error, never a message (no
    header or query can leak)."""
    names = [type(e).__name__]
    seen: Optional[BaseException] = e
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
        if seen is not None:
            names.append(type(seen).__name__)
    status = f", HTTP {_status(e)}" if _status(e) else ""
    return names[0] + (f" ({', '.join(names[1:])})" if names[1:] else "") + status


T = TypeVar("T")


def _retry(fn: Callable[[], T], what: str, bucket: str) -> T:
    """``fn()``, tried up to :data:`ATTEMPTS` times while it fails transiently; a :class:`StorageError`
    about ``what`` otherwise."""
    import urllib3
    from minio.error import MinioException, S3Error

    for attempt in range(1, ATTEMPTS + 1):
        try:
            return fn()
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as e:
            where = endpoint()
            transient = isinstance(e, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)) \
                or _status(e) in TRANSIENT_STATUS
            if transient and attempt < ATTEMPTS:
                time.sleep(RETRY_DELAYS_S[attempt - 1])
                continue
            if transient:
                problem = "the S3 endpoint failed" if _status(e) else "cannot reach the S3 endpoint"
                raise StorageError(f"{what}: {problem} {where} ({_cause(e)}) after {attempt} attempts") from None
            if isinstance(e, S3Error) and e.code == "NoSuchBucket":
                raise StorageInputError(f"bucket {bucket!r} does not exist at {where}") from None
            if isinstance(e, S3Error) and e.code in CREDENTIAL_CODES:
                raise StorageInputError(f"{where} rejected the S3 credentials ({e.code}): check "
                                        f"{settings.ENV_S3_ACCESS_KEY} and {settings.ENV_S3_SECRET_KEY} (the "
                                        "mlpipeline-minio-artifact secret on a cluster)") from None
            raise StorageError(f"{what}: failed at {where} on bucket {bucket!r}: "
                               f"{e.code if isinstance(e, S3Error) else _cause(e)}") from None
    raise AssertionError("unreachable: the last attempt returns or raises")


def _get(c: Minio, bucket: str, name: str, target: Path) -> None:
    """One object into ``target``, checked complete (minio writes ``target.<etag>.part.minio`` first)."""
    stat = c.fget_object(bucket, name, str(target))
    if target.stat().st_size != stat.size:
        raise ConnectionError(f"{target.stat().st_size} of {stat.size} bytes arrived")


def download(uri: str, dest: os.PathLike[str] | str) -> Path:
    """Copy every object under ``uri`` into ``dest`` (keeping relative paths); returns the local
    path that corresponds to ``uri`` (a file when ``uri`` names one object)."""
    bucket, prefix = parse_uri(uri)
    c = client()
    dest = Path(dest)
    listed = _retry(lambda: [o for o in c.list_objects(bucket, prefix=prefix, recursive=True) if not o.is_dir],
                    f"listing {uri}", bucket)
    # "s3://b/datasets/mnist" is that object, or the objects under "datasets/mnist/": never
    # "datasets/mnist-e2e/..." beside it
    single = any(o.object_name == prefix for o in listed)
    folder = prefix.rstrip("/") + "/" if prefix else ""
    objects = [o for o in listed if o.object_name == prefix] if single else \
        [o for o in listed if o.object_name.startswith(folder)]
    if not objects:
        raise StorageInputError(f"no objects under {uri} at {endpoint()}")
    base = PurePosixPath(prefix).parent if single else PurePosixPath(prefix)
    rels: List[Tuple[str, Tuple[str, ...]]] = []
    for obj in objects:
        rel = PurePosixPath(obj.object_name)
        if str(base) not in ("", "."):
            rel = rel.relative_to(base)
        if rel.is_absolute() or ".." in rel.parts:
            raise StorageInputError(f"refusing object {obj.object_name!r}: it would land outside {dest}")
        rels.append((obj.object_name, rel.parts))
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        for name, parts in rels:
            _retry(functools.partial(_get, c, bucket, name, stage.joinpath(*parts)),
                   f"download of s3://{bucket}/{name}", bucket)
        for _, parts in rels:  # all arrived: into place
            dest.joinpath(*parts).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage.joinpath(*parts), dest.joinpath(*parts))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dest / PurePosixPath(prefix).name if single else dest


def upload(src: os.PathLike[str] | str, uri: str) -> List[str]:
    """Copy a file, or every file under a folder, to ``uri``; returns the object names."""
    bucket, prefix = parse_uri(uri)
    c = client()
    src = Path(src)
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise StorageInputError(f"nothing to upload at {src}")
    files.sort(key=lambda f: f.name == LAST)  # stable: sorted, with the manifests last
    begun: List[str] = []  # the multipart uploads begun for the current object (minio 7.2's private API,
    create = getattr(c, "_create_multipart_upload", None)  # pinned; without it, nothing is tracked)
    if create is not None:
        def tracked(*args: Any, **kwargs: Any) -> str:
            begun.append(create(*args, **kwargs))
            return begun[-1]

        c._create_multipart_upload = tracked  # type: ignore[method-assign]
    names: List[str] = []
    for f in files:
        rel = f.name if src.is_file() else f.relative_to(src).as_posix()
        name = f"{prefix.rstrip('/')}/{rel}" if prefix else rel
        try:
            _retry(functools.partial(c.fput_object, bucket, name, str(f)), f"upload of {f} to s3://{bucket}/{name}",
                   bucket)
        except (StorageError, StorageInputError) as e:
            if not names:
                raise
            raise type(e)(f"{e}; {len(names)} of the {len(files)} files under {src} went up before it "
                               f"({LAST} files last): the same upload again completes it") from None
        for upload_id in begun[:-1]:  # cut off where the SDK could not abort it: its parts go now
            with contextlib.suppress(Exception):
                c._abort_multipart_upload(bucket, name, upload_id)
        begun.clear()
        names.append(name)
    return names

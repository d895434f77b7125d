"""Faults: the S3 server (a real SeaweedFS, private to this file) dies in the middle of an upload or
a download. A byte-counting TCP proxy between the client and the server kills `weed` once a given
number of bytes has passed, and records every request, so the attempts can be counted.

Expected (see advpatch.io.storage): storage.ATTEMPTS tries per object, then a StorageError naming the
object, the endpoint, the attempts and the cause, never a key; no partial object in the bucket once
the server is back, no partial file in the download's destination; a server back before the
retries run out is a success with the right bytes."""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import time

import numpy as np
import pytest
from conftest import S3_ACCESS_KEY, S3_SECRET_KEY, start_weed, weed_ports

from advpatch.io import storage

BUCKET = "advpatch-faults"
MiB = 1024 * 1024


class Proxy:
    """127.0.0.1:port -> 127.0.0.1:upstream, one thread per direction and connection. Records each
    request line, counts request-body bytes (``sent``) and response bytes (``received``), and runs
    the armed action once, cutting that connection, when a count reaches its mark."""

    def __init__(self, upstream: int):
        self.upstream, self.requests, self.sent, self.received = upstream, [], 0, 0
        self.trigger, self.lock = None, threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, direction: str, mark: int, action) -> None:
        with self.lock:
            self.requests, self.sent, self.received, self.trigger = [], 0, 0, (direction, mark, action)

    def attempts(self, method: str, path: str) -> int:
        return sum(r == f"{method} {path}" for r in self.requests)

    def _count(self, direction: str, n: int) -> bool:
        """Count ``n`` bytes; True when this passed the mark (the action has run: stop forwarding)."""
        with self.lock:
            if direction == "sent":
                self.sent += n
            else:
                self.received += n
            total = self.sent if direction == "sent" else self.received
            fire = self.trigger is not None and self.trigger[0] == direction and total >= self.trigger[1]
            action, self.trigger = (self.trigger[2], None) if fire else (None, self.trigger)
        if fire:
            action()
        return fire

    def _accept(self):
        while True:
            conn, _ = self.server.accept()
            threading.Thread(target=self._client_to_server, args=(conn,), daemon=True).start()

    def _client_to_server(self, client):
        upstream, head, body_left = None, b"", 0
        try:
            while data := client.recv(256 * 1024):
                pending, body = data, 0
                while pending:  # follow the requests: a head, then Content-Length body bytes
                    if body_left:
                        k = min(body_left, len(pending))
                        body_left, body, pending = body_left - k, body + k, pending[k:]
                        continue
                    head, pending = head + pending, b""
                    if b"\r\n\r\n" in head:
                        h, _, pending = head.partition(b"\r\n\r\n")
                        head = b""
                        with self.lock:
                            self.requests.append(" ".join(h.split(b"\r\n")[0].decode().split(" ")[:2]))
                        length = re.search(rb"(?im)^content-length:\s*(\d+)", h)
                        body_left = int(length.group(1)) if length else 0
                if upstream is None:
                    try:
                        upstream = socket.create_connection(("127.0.0.1", self.upstream))
                    except OSError:  # the server is down: the client's connection is reset
                        return
                    threading.Thread(target=self._server_to_client, args=(upstream, client), daemon=True).start()
                if self._count("sent", body):
                    return
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                _close(s)

    def _server_to_client(self, upstream, client):
        try:
            while (data := upstream.recv(256 * 1024)) and not self._count("received", len(data)):
                client.sendall(data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                _close(s)


def _close(s):
    if s is not None:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


class Weed:
    """A private SeaweedFS that can be killed and started again on the same data and ports."""

    def __init__(self, root):
        self.root, self.ports = root, weed_ports()
        self.proc = start_weed(root, self.ports, BUCKET)
        self.restarted = threading.Event()  # clear while a restart runs in the background
        self.restarted.set()

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def start(self):
        if self.proc.poll() is not None:
            self.proc = start_weed(self.root, self.ports, BUCKET)
        self.restarted.set()

    def kill_and_restart(self):
        """Kill now, start again in the background (about 2 s)."""
        self.kill()
        self.restarted.clear()
        threading.Thread(target=self.start, daemon=True).start()

    def client(self):
        from minio import Minio

        return Minio(f"127.0.0.1:{self.ports['s3']}", access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False)

    def objects(self, prefix: str):
        return sorted(o.object_name for o in self.client().list_objects(BUCKET, prefix=prefix, recursive=True))

    def incomplete_uploads(self, prefix: str):
        """Multipart uploads begun and neither completed nor aborted (never listed as objects)."""
        return [u.object_name for u in self.client()._list_multipart_uploads(BUCKET, prefix=prefix).uploads]


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    server = Weed(tmp_path_factory.mktemp("weed-faults"))
    yield server
    from advpatch.app.tracking_server import stop

    server.restarted.wait(60)  # a restart begun by a failed test: stop what it starts
    stop(server.proc)


@pytest.fixture
def proxy(weed, monkeypatch):
    """A fresh proxy in front of the (running) private server, and the client configured to use it."""
    weed.restarted.wait(60)
    weed.start()
    p = Proxy(weed.ports["s3"])
    monkeypatch.setenv("ADVPATCH_S3_ENDPOINT", f"http://127.0.0.1:{p.port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    yield p
    p.server.close()


def _random_file(path, size, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fails_clearly(call, proxy, what: str):
    """Run ``call``, which must fail; returns the message and the seconds it took."""
    start = time.monotonic()
    with pytest.raises(storage.StorageError) as err:
        call()
    took = time.monotonic() - start
    message = str(err.value)
    print(f"\n{what}: failed after {took:.1f} s: {message}")
    assert what in message and f"http://127.0.0.1:{proxy.port}" in message
    assert f"after {storage.ATTEMPTS} attempts" in message and "cannot reach the S3 endpoint" in message
    assert S3_SECRET_KEY not in message and S3_ACCESS_KEY not in message
    assert took < sum(storage.RETRY_DELAYS_S) + 25, took  # the server refuses at once: the delays, and some slack
    return message, took


def test_server_killed_mid_download_fails_after_bounded_retries_and_leaves_dest_as_it_was(weed, proxy, tmp_path):
    big = _random_file(tmp_path / "up" / "big.bin", 24 * MiB, seed=1)
    _random_file(tmp_path / "up" / "a.bin", MiB, seed=2)
    storage.upload(tmp_path / "up", f"s3://{BUCKET}/dl")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("was here")
    proxy.arm("received", MiB + 8 * MiB, weed.kill)  # a.bin, then a third of big.bin

    _fails_clearly(lambda: storage.download(f"s3://{BUCKET}/dl", dest), proxy, f"download of s3://{BUCKET}/dl/big.bin")
    assert proxy.attempts("HEAD", f"/{BUCKET}/dl/big.bin") == storage.ATTEMPTS  # each attempt starts with a stat
    assert proxy.attempts("GET", f"/{BUCKET}/dl/big.bin") == 1  # cut off; the others found the server gone
    assert sorted(p.name for p in dest.rglob("*")) == ["keep.txt"]  # not even the a.bin that had arrived
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "up"]  # no staging folder, no .part.minio

    weed.start()
    assert weed.objects("dl/") == ["dl/a.bin", "dl/big.bin"]
    assert _sha(storage.download(f"s3://{BUCKET}/dl/big.bin", tmp_path / "again")) == _sha(big)


@pytest.mark.parametrize("size, mark, how", [(4 * MiB, 2 * MiB, "PUT"), (24 * MiB, 8 * MiB, "POST")],
                         ids=["single-put", "multipart"])
def test_server_killed_mid_upload_leaves_no_partial_object(weed, proxy, tmp_path, size, mark, how, monkeypatch):
    """storage.upload sends a.bin, big.bin, then dataset.json (manifests last). The server dies a
    third of the way into big.bin: one PUT (under 5 MiB) or a multipart upload of 5 MiB parts. (The
    attempts are counted at shorter intervals: the download test above waits the real ones out.)"""
    monkeypatch.setattr(storage, "RETRY_DELAYS_S", (0.2,) * (storage.ATTEMPTS - 1))
    prefix = f"up-{how.lower()}"
    _random_file(tmp_path / "up" / "a.bin", MiB, seed=3)
    _random_file(tmp_path / "up" / "big.bin", size, seed=4)
    (tmp_path / "up" / "dataset.json").write_text("{}")
    proxy.arm("sent", MiB + mark, weed.kill)

    message, _ = _fails_clearly(lambda: storage.upload(tmp_path / "up", f"s3://{BUCKET}/{prefix}"), proxy,
                                f"upload of {tmp_path / 'up' / 'big.bin'} to s3://{BUCKET}/{prefix}/big.bin")
    assert "1 of the 3 files" in message
    path = f"/{BUCKET}/{prefix}/big.bin" + ("?uploads=" if how == "POST" else "")
    assert proxy.attempts(how, path) == storage.ATTEMPTS  # PUT: the object; POST ?uploads: a multipart upload begun

    weed.start()
    assert weed.objects(f"{prefix}/") == [f"{prefix}/a.bin"]  # no big.bin, and no dataset.json to make it look whole
    print(f"incomplete multipart uploads left (invisible): {len(weed.incomplete_uploads(f'{prefix}/'))}")
    storage.upload(tmp_path / "up", f"s3://{BUCKET}/{prefix}")  # as the message says: again, and it is whole
    assert weed.objects(f"{prefix}/") == [f"{prefix}/{n}" for n in ("a.bin", "big.bin", "dataset.json")]


def test_a_server_back_before_the_retries_run_out_is_a_success(weed, proxy, tmp_path):
    big = _random_file(tmp_path / "big.bin", 24 * MiB, seed=5)
    proxy.arm("sent", 8 * MiB, weed.kill_and_restart)
    start = time.monotonic()
    assert storage.upload(big, f"s3://{BUCKET}/transient") == ["transient/big.bin"]
    print(f"\nupload: {time.monotonic() - start:.1f} s, "
          f"{proxy.attempts('POST', f'/{BUCKET}/transient/big.bin?uploads=')} attempts, "
          f"incomplete uploads left: {len(weed.incomplete_uploads('transient/'))}")
    assert proxy.attempts("POST", f"/{BUCKET}/transient/big.bin?uploads=") >= 2
    assert weed.incomplete_uploads("transient/") == []  # the attempt cut off was aborted after the success
    assert weed.restarted.wait(30)

    proxy.arm("received", 8 * MiB, weed.kill_and_restart)
    start = time.monotonic()
    got = storage.download(f"s3://{BUCKET}/transient/big.bin", tmp_path / "down")
    print(f"download: {time.monotonic() - start:.1f} s, "
          f"{proxy.attempts('HEAD', f'/{BUCKET}/transient/big.bin')} attempts")
    assert proxy.attempts("HEAD", f"/{BUCKET}/transient/big.bin") >= 2
    assert _sha(got) == _sha(big) and sorted(p.name for p in (tmp_path / "down").iterdir()) == ["big.bin"]
    assert weed.restarted.wait(30)
    assert weed.objects("transient/") == ["transient/big.bin"]

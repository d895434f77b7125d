"""A small HTTP server that speaks just enough of the KFP API v2beta1 for `advpatch submit`, and
records every request. No KFP server can run here; this checks what the client sends."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List
from urllib.parse import parse_qs, urlparse


class FakeKFP:
    def __init__(self, final_state: str = "SUCCEEDED", polls_before_final: int = 1, fail_polls: int = 0) -> None:
        self.requests: List[Dict[str, Any]] = []
        self.terminated: List[str] = []
        self.fail_polls = fail_polls
        self.final_state = final_state
        self.polls_before_final = polls_before_final
        self.pipelines: Dict[str, Dict[str, Any]] = {}
        self.runs: Dict[str, Dict[str, Any]] = {}
        self.experiments: List[Dict[str, Any]] = []
        self._polls = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, code: int, body: Dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlparse(self.path)
                fake.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                      "body": body, "content_type": self.headers.get("Content-Type", ""),
                                      "authorization": self.headers.get("Authorization", "")})
                return body

            def do_GET(self):
                self._record()
                fake.handle(self, "GET")

            def do_POST(self):
                self._record()
                fake.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, h, method: str) -> None:
        req = self.requests[-1]
        path = req["path"]
        if path.endswith("/healthz"):
            return h._reply(200, {"commit_sha": "fake", "tag_name": "2.5.0", "multi_user": False})
        if path == "/apis/v2beta1/pipelines" and method == "GET":
            flt = json.loads(req["query"].get("filter", ["{}"])[0] or "{}")
            names = [p.get("stringValue", p.get("string_value")) for p in flt.get("predicates", [])
                     if p.get("key") in ("name", "display_name")]
            namespace = req["query"].get("namespace", [""])[0]
            found = [p for p in self.pipelines.values()
                     if (not names or p["display_name"] in names) and p.get("namespace", "") == namespace]
            return h._reply(200, {"pipelines": found, "total_size": len(found)})
        if path == "/apis/v2beta1/pipelines/upload" and method == "POST":
            name = req["query"].get("name", ["unnamed"])[0]
            pid = f"pipeline-{len(self.pipelines) + 1}"
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": name,
                                   "namespace": req["query"].get("namespace", [""])[0]}
            return h._reply(200, {"pipeline_id": pid, "display_name": name})
        if path == "/apis/v2beta1/pipelines/upload_version" and method == "POST":
            return h._reply(200, {"pipeline_id": req["query"]["pipelineid"][0], "pipeline_version_id": "version-2",
                                  "display_name": req["query"].get("name", [""])[0]})
        if path.startswith("/apis/v2beta1/pipelines/") and path.endswith("/versions"):
            pid = path.split("/")[4]
            return h._reply(200, {"pipeline_versions": [{"pipeline_id": pid, "pipeline_version_id": "version-1"}],
                                  "total_size": 1})
        if path == "/apis/v2beta1/experiments" and method == "GET":
            return h._reply(200, {"experiments": [], "total_size": 0})
        if path == "/apis/v2beta1/experiments" and method == "POST":
            body = json.loads(req["body"] or b"{}")
            self.experiments.append(body)
            return h._reply(200, {"experiment_id": "experiment-1", "display_name": body.get("display_name"),
                                  "namespace": body.get("namespace", "")})
        if path == "/apis/v2beta1/runs" and method == "POST":
            body = json.loads(req["body"])
            rid = f"run-{len(self.runs) + 1}"
            self.runs[rid] = body
            return h._reply(200, {"run_id": rid, "display_name": body.get("display_name"), "state": "PENDING"})
        if path.startswith("/apis/v2beta1/runs/") and path.endswith(":terminate") and method == "POST":
            self.terminated.append(path.split("/")[-1].split(":")[0])
            return h._reply(200, {})
        if path.startswith("/apis/v2beta1/runs/") and method == "GET":
            if self.fail_polls:
                self.fail_polls -= 1
                return h._reply(503, {"error": "API server restarting"})
            rid = path.split("/")[-1]
            self._polls += 1
            state = self.final_state if self._polls > self.polls_before_final else "RUNNING"
            return h._reply(200, {"run_id": rid, "state": state})
        return h._reply(404, {"error": f"fake KFP has no {method} {path}"})

    def __enter__(self) -> "FakeKFP":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

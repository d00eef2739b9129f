"""A small in-memory Kubeflow Pipelines REST API (v2beta1) for client tests.

It serves only what `kfp.Client` calls for `llmft submit` / `llmft schedule`: healthz,
experiments, pipeline + version upload and listing, runs create/get and recurring runs.
Every request is recorded (method, path, query, headers, JSON body, uploaded files) so tests
assert what was sent. Runs follow a script of states, one step per GET, so `--wait` sees
RUNNING -> SUCCEEDED (or FAILED). It listens on 127.0.0.1 on a port the OS picks.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

API = "/apis/v2beta1"


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any = None
    files: dict[str, bytes] = field(default_factory=dict)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _matches_filter(item: dict[str, Any], raw_filter: str | None) -> bool:
    """Apply the EQUALS predicates of a KFP list filter (the only kind the client sends)."""
    if not raw_filter:
        return True
    for predicate in json.loads(raw_filter).get("predicates", []):
        expected = predicate.get("stringValue", predicate.get("string_value"))
        if item.get(predicate["key"]) != expected:
            return False
    return True


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if not k.startswith("_")}


class FakeKfp:
    """Start with `with FakeKfp() as kfp:`; `kfp.url` is the host to give kfp.Client."""

    def __init__(self, multi_user: bool = False) -> None:
        self.multi_user = multi_user
        self.requests: list[RecordedRequest] = []
        self.experiments: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        # States a new run goes through, one per GET; the last one stays.
        self.run_script: list[str] = ["RUNNING", "SUCCEEDED"]
        self.run_error: str | None = None
        # The next N GETs of a run answer 503, like an API server restarting mid-wait.
        self.run_get_failures = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeKfp:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._handle(self)

            def do_POST(self) -> None:
                fake._handle(self)

            def do_DELETE(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

        # Port 0: the OS picks a free port atomically, so parallel test runs never collide.
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeKfp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- assertions helpers

    def find(self, method: str, path: str) -> list[RecordedRequest]:
        """Recorded requests with this method whose path matches the regex `path` fully."""
        pattern = re.compile(path)
        return [r for r in self.requests if r.method == method and pattern.fullmatch(r.path)]

    # -- request handling

    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        ctype = h.headers.get("Content-Type", "")
        body: Any = None
        files: dict[str, bytes] = {}
        if ctype.startswith("multipart/form-data"):
            message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                files[str(name)] = part.get_payload(decode=True) or b""
        elif raw:
            body = json.loads(raw)
        request = RecordedRequest(
            method=h.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in h.headers.items()},
            body=body,
            files=files,
        )
        with self._lock:
            self.requests.append(request)
            try:
                status, payload = 200, self._route(request)
            except ApiError as exc:
                status, payload = exc.status, {"error_message": str(exc), "code": exc.status}
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, r: RecordedRequest) -> Any:
        m, p = r.method, r.path
        if not p.startswith(API):
            raise ApiError(404, f"no route {p}")
        p = p[len(API) :]
        if m == "GET" and p == "/healthz":
            return {"multi_user": self.multi_user, "pipeline_store": "database"}
        if p == "/experiments":
            if m == "POST":
                return self._create_experiment(r)
            return self._list(self.experiments, r, "experiments")
        if m == "GET" and (match := re.fullmatch(r"/experiments/([^/]+)", p)):
            return self._get(self.experiments, match[1])
        if m == "GET" and p == "/pipelines":
            return self._list(self.pipelines, r, "pipelines")
        if m == "POST" and p == "/pipelines/upload":
            return self._upload_pipeline(r)
        if m == "POST" and p == "/pipelines/upload_version":
            return self._upload_version(r)
        if m == "GET" and (match := re.fullmatch(r"/pipelines/([^/]+)/versions", p)):
            versions = {k: v for k, v in self.versions.items() if v["pipeline_id"] == match[1]}
            return self._list(versions, r, "pipeline_versions")
        if m == "GET" and (match := re.fullmatch(r"/pipelines/([^/]+)/versions/([^/]+)", p)):
            return self._get(self.versions, match[2])
        if m == "POST" and p == "/runs":
            return self._create_run(r)
        if m == "GET" and (match := re.fullmatch(r"/runs/([^/:]+)", p)):
            return self._get_run(match[1])
        if p == "/recurringruns":
            if m == "POST":
                return self._create_recurring_run(r)
            items = self.recurring_runs
            if exp := r.param("experiment_id"):
                items = {k: v for k, v in items.items() if v.get("experiment_id") == exp}
            return self._list(items, r, "recurringRuns")
        if match := re.fullmatch(r"/recurringruns/([^/:]+)(?::(enable|disable))?", p):
            rr_id, action = match[1], match[2]
            rr = self._get(self.recurring_runs, rr_id)
            if m == "GET" and action is None:
                return rr
            if m == "DELETE" and action is None:
                del self.recurring_runs[rr_id]
                return {}
            if m == "POST" and action:
                self.recurring_runs[rr_id]["mode"] = "ENABLE" if action == "enable" else "DISABLE"
                return {}
        raise ApiError(404, f"no route {m} {r.path}")

    def _get(self, items: dict[str, dict[str, Any]], item_id: str) -> dict[str, Any]:
        if item_id not in items:
            raise ApiError(404, f"{item_id} not found")
        return _public(items[item_id])

    def _list(self, items: dict[str, dict[str, Any]], r: RecordedRequest, key: str) -> dict[str, Any]:
        namespace = r.param("namespace")
        found = [
            _public(item)
            for item in items.values()
            if _matches_filter(item, r.param("filter"))
            and (namespace is None or item.get("namespace", "") == namespace)
        ]
        # The API omits empty lists, like the real server's protojson output.
        return {key: found, "total_size": len(found)} if found else {"total_size": 0}

    def _create_experiment(self, r: RecordedRequest) -> dict[str, Any]:
        exp_id = self._new_id("exp")
        self.experiments[exp_id] = {**r.body, "experiment_id": exp_id, "storage_state": "AVAILABLE"}
        return _public(self.experiments[exp_id])

    def _upload_pipeline(self, r: RecordedRequest) -> dict[str, Any]:
        name = r.param("name") or "pipeline"
        if any(p["display_name"] == name for p in self.pipelines.values()):
            raise ApiError(409, f"pipeline {name} already exists")
        pipeline_id = self._new_id("pipeline")
        self.pipelines[pipeline_id] = {
            "pipeline_id": pipeline_id,
            "name": name,
            "display_name": name,
            "namespace": r.param("namespace") or "",
        }
        # Like KFP: the upload also creates a first version named like the pipeline.
        self._add_version(pipeline_id, name, r.files["uploadfile"])
        return _public(self.pipelines[pipeline_id])

    def _upload_version(self, r: RecordedRequest) -> dict[str, Any]:
        pipeline_id, name = r.param("pipelineid"), r.param("name")
        if pipeline_id not in self.pipelines or not name:
            raise ApiError(400, "pipelineid and name are required")
        if any(v["pipeline_id"] == pipeline_id and v["display_name"] == name for v in self.versions.values()):
            raise ApiError(409, f"version {name} already exists")
        return _public(self._add_version(pipeline_id, name, r.files["uploadfile"]))

    def _add_version(self, pipeline_id: str, name: str, package: bytes) -> dict[str, Any]:
        version_id = self._new_id("version")
        spec = next(iter(yaml.safe_load_all(package)))
        self.versions[version_id] = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": version_id,
            "name": name,
            "display_name": name,
            "pipeline_spec": spec,
        }
        return self.versions[version_id]

    def _create_run(self, r: RecordedRequest) -> dict[str, Any]:
        run_id = self._new_id("run")
        self.runs[run_id] = {**r.body, "run_id": run_id, "state": "PENDING", "_script": list(self.run_script)}
        return _public(self.runs[run_id])

    def _get_run(self, run_id: str) -> dict[str, Any]:
        run = self.runs.get(run_id)
        if run is None:
            raise ApiError(404, f"run {run_id} not found")
        if self.run_get_failures > 0:
            self.run_get_failures -= 1
            raise ApiError(503, "upstream connect error")
        if run["_script"]:
            run["state"] = run["_script"].pop(0) if len(run["_script"]) > 1 else run["_script"][0]
        if run["state"] == "FAILED" and self.run_error:
            run["error"] = {"code": 2, "message": self.run_error}
        return _public(run)

    def _create_recurring_run(self, r: RecordedRequest) -> dict[str, Any]:
        rr_id = self._new_id("recurring")
        self.recurring_runs[rr_id] = {**r.body, "recurring_run_id": rr_id, "status": "ENABLED"}
        return _public(self.recurring_runs[rr_id])

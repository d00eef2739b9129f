"""A loopback server answering the part of the Hugging Face Hub's file API that snapshot_download uses.

Run as `python hub_server.py --root DIR --port PORT --log FILE [--token TOKEN]`. Repositories are
directories `DIR/<org>/<name>/`; each has one commit, whose sha is derived from its files. A
repository holding a `.gated` file answers only requests carrying `Authorization: Bearer TOKEN`.
Every request is appended to FILE as "METHOD PATH", so tests can tell whether one was made.

Endpoints (as huggingface_hub's HfApi and file_download call them):
- GET  /api/models/<repo>[/revision/<rev>]   model info: id, sha, siblings
- GET  /api/models/<repo>/tree/<rev>         file listing (type, path, size, oid)
- HEAD /<repo>/resolve/<rev>/<file>          X-Repo-Commit, ETag, Content-Length
- GET  /<repo>/resolve/<rev>/<file>          the file
Errors carry the X-Error-Code header huggingface_hub maps to its exceptions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

GATED_MARKER = ".gated"


def repository_files(repo_dir: Path) -> dict[str, Path]:
    return {
        path.relative_to(repo_dir).as_posix(): path
        for path in sorted(repo_dir.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    }


def commit_sha(repo_dir: Path) -> str:
    """One sha per repository content: the same files give the same commit."""
    digest = hashlib.sha1()
    for name, path in repository_files(repo_dir).items():
        digest.update(f"{name}:{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


class HubHandler(BaseHTTPRequestHandler):
    root: Path
    log_path: Path
    token: str

    def log_message(self, format: str, *args: object) -> None:
        return  # requests go to the request log instead

    def _record(self) -> None:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"{self.command} {self.path}\n")

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: object, commit: str | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        self.wfile.write(body)

    def _repository(self, repo: str, revision: str) -> tuple[Path, str] | None:
        """The repository and its commit, or None once an error has been answered."""
        repo_dir = self.root / repo
        if not repo_dir.is_dir() or ".." in Path(repo).parts:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}")
            return None
        if (repo_dir / GATED_MARKER).exists() and self.headers.get("Authorization") != f"Bearer {self.token}":
            self._error(401, "GatedRepo", f"Access to model {repo} is restricted.")
            return None
        sha = commit_sha(repo_dir)
        if revision not in ("main", sha):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo_dir, sha

    def do_HEAD(self) -> None:
        self._record()
        self._serve_file(send_body=False)

    def do_GET(self) -> None:
        self._record()
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._json({"ok": True})
            return
        if path.startswith("/api/models/"):
            self._api(path.removeprefix("/api/models/"))
            return
        self._serve_file(send_body=True)

    def _api(self, rest: str) -> None:
        parts = rest.split("/")
        repo, tail = "/".join(parts[:2]), parts[2:]
        revision = unquote(tail[1]) if len(tail) >= 2 else "main"
        found = self._repository(repo, revision)
        if found is None:
            return
        repo_dir, sha = found
        files = repository_files(repo_dir)
        if tail[:1] == ["tree"]:
            listing = [
                {
                    "type": "file",
                    "path": name,
                    "size": file.stat().st_size,
                    "oid": hashlib.sha1(file.read_bytes()).hexdigest(),
                }
                for name, file in files.items()
            ]
            self._json(listing)
            return
        self._json({"id": repo, "sha": sha, "private": False, "siblings": [{"rfilename": n} for n in files]})

    def _serve_file(self, send_body: bool) -> None:
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            self._error(404, "EntryNotFound", f"no route for {self.path}")
            return
        repo, revision, name = "/".join(parts[:2]), unquote(parts[3]), unquote("/".join(parts[4:]))
        found = self._repository(repo, revision)
        if found is None:
            return
        repo_dir, sha = found
        file = repository_files(repo_dir).get(name)
        if file is None:
            self._error(404, "EntryNotFound", f"{name} does not exist in {repo}")
            return
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("X-Repo-Commit", sha)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if send_body:
            self.wfile.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--token", default="")
    args = parser.parse_args()
    HubHandler.root, HubHandler.log_path, HubHandler.token = args.root, args.log, args.token
    ThreadingHTTPServer(("127.0.0.1", args.port), HubHandler).serve_forever()


if __name__ == "__main__":
    main()

"""Run the tritonserver binary shipped in the nvidia-pytriton wheel, on loopback only.

pytriton's own `Triton` class is not used (it serves Python callables, not a model
repository); the binary is run the way pytriton runs it:

- the wheel's `pytriton/tritonserver` directory is copied to a work dir without the
  per-Python-version stubs, and the stub for the running interpreter is copied into
  `backends/python/triton_python_backend_stub`;
- `LD_LIBRARY_PATH` gets `nvidia_pytriton.libs` (tritonserver's bundled libraries) and
  the running interpreter's LIBDIR: the stub links libpython3.X dynamically, and without
  LIBDIR first it picks up whatever libpython the system has (a different build, or
  none), which breaks model load;
- `PYTHONPATH` gets this environment's site-packages, so model.py in the stub imports
  the same torch/transformers as this process.

Every listener binds 127.0.0.1; metrics are off. The server runs in its own session, so
it can outlive the calling process (`keep_running`) and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
SERVER_DIRNAME = "tritonserver"
LOG_NAME = "tritonserver.log"
SERVER_INFO_NAME = "server.json"
_POLL_S = 0.25


class LocalServerError(RuntimeError):
    """The local Triton server could not be prepared, started or made ready."""


class ServerInfo(BaseModel):
    """What a later command needs to find and stop a running local server (server.json)."""

    pid: int = Field(description="Process id of tritonserver.")
    http_port: int = Field(description="HTTP/REST port on 127.0.0.1.")
    grpc_port: int = Field(description="gRPC port on 127.0.0.1.")
    log_path: str = Field(description="Server log file (stdout and stderr).")
    repository: str = Field(description="Local model repository the server loaded.")
    workdir: str = Field(description="Work directory holding the server copy and the log.")

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"


@dataclass
class LocalServer:
    """A started server: its info and, while this process owns it, its Popen handle."""

    info: ServerInfo
    process: subprocess.Popen[bytes]


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def pytriton_dist_dir() -> Path:
    """The `tritonserver` directory inside the installed nvidia-pytriton wheel (not imported)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise LocalServerError("nvidia-pytriton is not installed: the local target needs llmft[serve]")
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise LocalServerError(f"no tritonserver binary in {dist}")
    return dist


def pytriton_libs_dir(dist: Path) -> Path:
    # A wheel install keeps the bundled .so files next to the package (auditwheel layout).
    return dist.parent.parent / "nvidia_pytriton.libs"


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def prepare_server(workdir: Path) -> Path:
    """Copy the server to `workdir/tritonserver` with the stub for this Python; return that dir."""
    dist = pytriton_dist_dir()
    stub = dist / "python_backend_stubs" / python_version() / "triton_python_backend_stub"
    if not stub.is_file():
        raise LocalServerError(f"nvidia-pytriton ships no python backend stub for Python {python_version()}")
    target = workdir / SERVER_DIRNAME
    if target.exists():
        shutil.rmtree(target)  # a stale copy may hold another Python's stub
    shutil.copytree(
        dist,
        target,
        ignore=shutil.ignore_patterns("python_backend_stubs", "triton_python_backend_stub", "__pycache__"),
    )
    shutil.copy2(stub, target / "backends" / "python" / "triton_python_backend_stub")
    return target


def _prepend(paths: list[str], existing: str | None) -> str:
    parts = [*paths, *(existing.split(os.pathsep) if existing else [])]
    return os.pathsep.join(dict.fromkeys(part for part in parts if part))  # dedupe, keep order


def server_env(dist: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: see the module docstring for why each variable is set."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = _prepend([libdir, str(pytriton_libs_dir(dist))], env.get("LD_LIBRARY_PATH"))
    site_packages = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env["PYTHONPATH"] = _prepend(site_packages, env.get("PYTHONPATH"))
    env["PATH"] = _prepend([str(Path(sys.executable).parent)], env.get("PATH"))
    return env


def server_command(server_dir: Path, repository: Path, http_port: int, grpc_port: int) -> list[str]:
    # A unique shm prefix: python-backend regions in /dev/shm would clash between servers.
    shm_prefix = f"llmft_{uuid.uuid4().hex[:12]}_"
    return [
        str(server_dir / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={server_dir / 'backends'}",
        f"--cache-directory={server_dir / 'caches'}",
        f"--http-address={LOOPBACK}",
        f"--http-port={http_port}",
        f"--grpc-address={LOOPBACK}",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        # config.pbtxt is complete; auto-complete would start one more stub just to ask model.py.
        "--disable-auto-complete-config",
        "--exit-timeout-secs=15",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
    ]


def start_local_server(
    repository: Path, workdir: Path, http_port: int = 0, grpc_port: int = 0
) -> LocalServer:
    """Start tritonserver on 127.0.0.1 serving `repository`; ports 0 mean 'pick free ones'."""
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / SERVER_INFO_NAME).is_file():
        running = read_server_info(workdir)
        if _is_tritonserver(running.pid):
            raise LocalServerError(
                f"a tritonserver (pid {running.pid}) started earlier still runs from {workdir}; "
                "stop it first (stop_local_server / stop_from_info) or use another workdir"
            )
    server_dir = prepare_server(workdir)
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    while grpc_port == http_port:  # two probes can return the same port once it was released
        grpc_port = free_port()
    command = server_command(server_dir, repository.resolve(), http_port, grpc_port)
    log_path = workdir / LOG_NAME
    log.info(
        "starting tritonserver on %s (http %d, grpc %d), log %s", LOOPBACK, http_port, grpc_port, log_path
    )
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=server_env(pytriton_dist_dir()),
            cwd=workdir,
            # Own session: no terminal signals from the caller, and its stubs form one group.
            start_new_session=True,
        )
    info = ServerInfo(
        pid=process.pid,
        http_port=http_port,
        grpc_port=grpc_port,
        log_path=str(log_path),
        repository=str(repository.resolve()),
        workdir=str(workdir.resolve()),
    )
    return LocalServer(info=info, process=process)


def log_tail(path: str | Path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no server log: {exc})"


def _http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_until_ready(server: LocalServer, model_name: str, timeout_s: float) -> float:
    """Poll server and model readiness; return seconds waited. Raise with the log tail on failure."""
    started = time.monotonic()
    deadline = started + timeout_s
    base = server.info.http_url
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise LocalServerError(
                f"tritonserver exited with code {code} before it was ready; log {server.info.log_path}:\n"
                + log_tail(server.info.log_path)
            )
        if _http_ok(f"{base}/v2/health/ready") and _http_ok(f"{base}/v2/models/{model_name}/ready"):
            waited = time.monotonic() - started
            log.info("tritonserver ready after %.1f s (model %s)", waited, model_name)
            return waited
        time.sleep(_POLL_S)
    raise LocalServerError(
        f"tritonserver was not ready with model {model_name!r} within {timeout_s:.0f} s; "
        f"log {server.info.log_path}:\n" + log_tail(server.info.log_path)
    )


def _is_tritonserver(pid: int) -> bool:
    """True while `pid` is a live (not zombie) tritonserver: guards against a recycled pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    program = cmdline.split(b"\0", 1)[0]
    return Path(os.fsdecode(program)).name == "tritonserver" and state != "Z"


def _reap(pid: int) -> None:
    # Collect the exit status when the server is our child, so it does not stay a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not _is_tritonserver(pid):
            return True
        time.sleep(_POLL_S)
    return False


def stop_local_server(pid: int, timeout_s: float = 30.0) -> bool:
    """Stop a local tritonserver by PID: SIGTERM, then SIGKILL after `timeout_s`.

    Returns True if the server was running and has stopped, False if no tritonserver had
    that PID (already stopped). Refuses to signal a PID that is not a tritonserver.
    """
    _reap(pid)
    if not _is_tritonserver(pid):
        log.info("no tritonserver with pid %d (already stopped)", pid)
        return False
    log.info("stopping tritonserver pid %d", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout_s):
        return True
    log.warning("tritonserver pid %d did not stop within %.0f s; killing it", pid, timeout_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # The server leads its own session (start_new_session), so its group is it plus its
        # python-backend stubs and nothing else.
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, 10.0):
        raise LocalServerError(f"tritonserver pid {pid} survived SIGKILL")
    return True


def write_server_info(info: ServerInfo) -> Path:
    path = Path(info.workdir) / SERVER_INFO_NAME
    path.write_text(info.model_dump_json(indent=2), encoding="utf-8")
    return path


def read_server_info(path: str | Path) -> ServerInfo:
    """Read server.json (give the file or the work dir holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / SERVER_INFO_NAME
    return ServerInfo.model_validate(json.loads(path.read_text(encoding="utf-8")))


def stop_from_info(path: str | Path, timeout_s: float = 30.0) -> bool:
    """Stop the server a server.json describes, then remove that file and the server copy."""
    info = read_server_info(path)
    stopped = stop_local_server(info.pid, timeout_s)
    (Path(info.workdir) / SERVER_INFO_NAME).unlink(missing_ok=True)
    shutil.rmtree(Path(info.workdir) / SERVER_DIRNAME, ignore_errors=True)
    return stopped

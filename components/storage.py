"""One storage layer for local paths and s3:// URIs.

Every step reads and writes through these functions, so a run moves between a laptop
(plain directories) and EKS (S3) by changing a URI, not code. S3 access uses boto3's
standard credential chain; `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`) points it at an
S3-compatible store. Transfers are multipart with retries and backoff, bounded so that an
unreachable endpoint fails in seconds (see `S3_CONNECT_TIMEOUT_S`, `S3_MAX_ATTEMPTS`). Every
botocore failure leaves this module as a `StorageError` that names the URI and what to check.

`check_apart` refuses an output that is, contains or lies inside one of a step's inputs: every
step calls it first, so no output ever overwrites the model or data it reads.

A directory is complete only when its manifest (file list, sizes, sha256) has been
written last. `publish_dir` writes it; `require_complete` refuses a directory without
one, so a crashed writer never leaves something that looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal

from components import jsonout

log = logging.getLogger(__name__)

MANIFEST_NAME = "_MANIFEST.json"
_MULTIPART_THRESHOLD = 64 * 1024 * 1024
_MULTIPART_CHUNK = 64 * 1024 * 1024
# An unreachable endpoint must fail in seconds, not after botocore's minutes of retries: each
# attempt may wait S3_CONNECT_TIMEOUT_S to connect, and the S3_MAX_ATTEMPTS attempts back off
# by at most 1 + 2 s between them, so a dead endpoint is reported within about 3 x 5 + 3 = 18 s
# (a refused connection within about 3 s). Throttling (503 SlowDown) gets the same retries.
S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 60
S3_MAX_ATTEMPTS = 3
_ENDPOINT_HELP = "AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and the network"
_CREDENTIALS_HELP = (
    "boto3's credential chain: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the "
    "pod's or instance's IAM role"
)


class IncompleteDirectoryError(RuntimeError):
    """A directory has no manifest, or its files do not match it."""


class MissingDirectoryError(IncompleteDirectoryError):
    """Nothing usable is where a directory should be: no such path or prefix, a loop, a device."""


class UnsafeManifestError(IncompleteDirectoryError):
    """A manifest that is malformed, or lists a path that would land outside its directory."""


class StorageError(RuntimeError):
    """S3 could not be used (no credentials, unreachable endpoint, no bucket, access denied).

    The message names the URI and what to check; never a credential.
    """


class OverlappingPathsError(ValueError):
    """An output is, contains or lies inside one of the step's inputs."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or s3:// URI."""
    if is_s3(uri):
        return "/".join([uri.rstrip("/"), *(part.strip("/") for part in parts)])
    return str(Path(uri).joinpath(*parts))


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"not an s3:// URI with a bucket: {uri!r}")
    return bucket, key


# --- inputs and outputs ------------------------------------------------------------------


_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def local_path_problem(path: str | Path, want: Literal["directory", "file"]) -> str | None:
    """Why the local `path` cannot be read as `want` ("directory" or "file"); None when it can.

    Tells apart what `Path.exists()` lumps together: a missing path, a dangling symlink, a symlink
    loop, and a device or pipe (/dev/null) where a file or directory was expected.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode  # follows symlinks, so a loop or a dangling link shows here
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a symlink loop"
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return "is a symlink to a path that does not exist" if path.is_symlink() else "does not exist"
        return f"cannot be read: {error.strerror or error}"
    kind = next((name for test, name in _FILE_TYPES if test(mode)), "not a file or directory")
    expected = "a directory" if want == "directory" else "a regular file"
    return None if kind == expected else f"is {kind}, not {expected}"


def _comparable(uri: str) -> tuple[str, tuple[str, ...]] | None:
    """Where `uri` lies, as (place, path parts) that compare by whole components; None: no place here."""
    if not uri or uri.startswith("hf://"):
        return None  # a Hub id is read, never written
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return f"s3://{bucket}", tuple(part for part in key.split("/") if part)
    # realpath: a symlink (or `..`) to the same directory is the same directory.
    return "local", Path(os.path.realpath(uri)).parts


def check_apart(outputs: Mapping[str, str | None], inputs: Mapping[str, str | None]) -> None:
    """Refuse an output that is, contains or lies inside an input: writing it would destroy that input.

    `outputs` and `inputs` map field names (as the step's config spells them) to local paths or
    s3:// URIs; None and empty values are skipped, and hf:// ids never overlap. Local paths are
    compared with symlinks resolved; S3 URIs by bucket and key prefix on whole "/" components
    (s3://b/model and s3://b/model-v2 are apart).
    """
    for out_name, output in outputs.items():
        out_place = _comparable(output or "")
        if out_place is None:
            continue
        for in_name, source in inputs.items():
            in_place = _comparable(source or "")
            if in_place is None or in_place[0] != out_place[0]:
                continue
            out_parts, in_parts = out_place[1], in_place[1]
            if out_parts == in_parts:
                relation = "is the same place as"
            elif out_parts[: len(in_parts)] == in_parts:
                relation = "lies inside"
            elif in_parts[: len(out_parts)] == out_parts:
                relation = "contains"
            else:
                continue
            raise OverlappingPathsError(
                f"{out_name} {output} {relation} {in_name} {source}: writing it would overwrite that "
                f"input; choose another {out_name}"
            )


@cache
def _s3_client() -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        read_timeout=S3_READ_TIMEOUT_S,
        retries={"total_max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
    )
    try:
        return boto3.client("s3", config=config)
    except Exception as error:  # e.g. a malformed AWS_ENDPOINT_URL: botocore's ValueError
        raise StorageError(f"cannot set up the S3 client: {error}; check {_ENDPOINT_HELP}") from None


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


def _client_error_message(uri: str, action: str, error: Any) -> str:
    """What S3's answer (a botocore ClientError) means for `uri`, and what to check."""
    response = error.response or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    bucket = uri.removeprefix("s3://").split("/", 1)[0]
    if code == "NoSuchBucket":
        return (
            f"cannot {action} {uri}: bucket {bucket!r} does not exist at {_endpoint()}; "
            f"check the bucket name and {_ENDPOINT_HELP}"
        )
    if code in ("NoSuchKey", "NotFound", "404") or status == 404:
        return f"cannot {action} {uri}: it does not exist"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        return f"cannot {action} {uri}: S3 refused the credentials ({code}); check {_CREDENTIALS_HELP}"
    if code in ("AccessDenied", "Forbidden", "403", "AllAccessDisabled") or status == 403:
        return (
            f"cannot {action} {uri}: access denied (HTTP 403 {code}): the credentials in use may not "
            f"{action} it; check the bucket policy and {_CREDENTIALS_HELP}"
        )
    return f"cannot {action} {uri}: S3 answered {status or '?'} {code or type(error).__name__}"


@contextlib.contextmanager
def _s3_errors(uri: str, action: str) -> Iterator[None]:
    """Turn botocore's exceptions (tracebacks of a dozen frames) into one `StorageError` line."""
    from boto3.exceptions import Boto3Error
    from botocore import exceptions as boto

    try:
        yield
    except boto.ClientError as error:
        raise StorageError(_client_error_message(uri, action, error)) from None
    except (boto.NoCredentialsError, boto.PartialCredentialsError, boto.CredentialRetrievalError) as error:
        raise StorageError(f"cannot {action} {uri}: {error}; check {_CREDENTIALS_HELP}") from None
    except (boto.EndpointConnectionError, boto.ConnectTimeoutError, boto.ConnectionClosedError) as error:
        raise StorageError(
            f"cannot {action} {uri}: no answer from {_endpoint()} after {S3_MAX_ATTEMPTS} attempts "
            f"({type(error).__name__}); check {_ENDPOINT_HELP}"
        ) from None
    except Boto3Error as error:
        # boto3 wraps a failed upload's ClientError (S3UploadFailedError): report the S3 answer itself.
        cause = error.__context__
        if isinstance(cause, boto.ClientError):
            raise StorageError(_client_error_message(uri, action, cause)) from None
        raise StorageError(f"cannot {action} {uri}: {error}") from None
    except boto.BotoCoreError as error:
        raise StorageError(f"cannot {action} {uri}: {error}") from None


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=_MULTIPART_THRESHOLD, multipart_chunksize=_MULTIPART_CHUNK)


def exists(uri: str) -> bool:
    """True for an existing file, or a directory (on S3: a prefix followed by "/")."""
    if not is_s3(uri):
        return Path(uri).exists()
    bucket, key = split_s3(uri)
    key = key.rstrip("/")
    client = _s3_client()
    with _s3_errors(uri, "list"):
        if key:
            # An object named exactly `key` sorts first among the keys that start with it.
            first = client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
            if first and first[0]["Key"] == key:
                return True
        prefix = f"{key}/" if key else ""
        return client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0) > 0


def read_text(uri: str) -> str:
    if not is_s3(uri):
        return Path(uri).read_text(encoding="utf-8")
    bucket, key = split_s3(uri)
    client = _s3_client()
    with _s3_errors(uri, "read"):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body.decode("utf-8")


def write_text(uri: str, text: str) -> None:
    if not is_s3(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        Path(uri).write_text(text, encoding="utf-8")
        return
    bucket, key = split_s3(uri)
    client = _s3_client()
    with _s3_errors(uri, "write"):
        client.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"))


def download_file(uri: str, local_path: str | Path) -> Path:
    local_path = Path(local_path)
    local_path.parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = _s3_client()
        with _s3_errors(uri, "download"):
            client.download_file(bucket, key, str(local_path), Config=_transfer_config())
    elif Path(uri).resolve() != local_path.resolve():
        shutil.copyfile(uri, local_path)
    return local_path


def upload_file(local_path: str | Path, uri: str) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = _s3_client()
        with _s3_errors(uri, "upload to"):
            client.upload_file(str(local_path), bucket, key, Config=_transfer_config())
    elif Path(uri).resolve() != Path(local_path).resolve():
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_path, uri)


@dataclass(frozen=True)
class S3Object:
    """One object of a listing: its size and ETag (which changes when the object is replaced)."""

    size: int
    etag: str


def list_s3_objects(uri: str) -> dict[str, S3Object]:
    """Every object under an S3 "directory": its key relative to `uri`, with size and ETag.

    Keys are returned as S3 holds them; a caller that turns them into local paths must refuse
    ones with `..` or absolute parts (see `safe_relative_path`).
    """
    bucket, prefix = split_s3(uri)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    objects: dict[str, S3Object] = {}
    client = _s3_client()
    with _s3_errors(uri, "list"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                objects[item["Key"][len(prefix) :]] = S3Object(size=item["Size"], etag=item.get("ETag", ""))
    return objects


def read_s3_head(uri: str, n_bytes: int) -> bytes:
    """The first `n_bytes` of an S3 object (fewer if it is shorter), with one ranged GET."""
    if n_bytes <= 0:
        return b""
    bucket, key = split_s3(uri)
    client = _s3_client()
    with _s3_errors(uri, "read"):
        return bytes(client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{n_bytes - 1}")["Body"].read())


def path_problem(path: object) -> str | None:
    """Why a file name from elsewhere (a manifest entry, an S3 key) could land outside its directory.

    Only plain relative POSIX paths below the directory are accepted; None when `path` is one.
    """
    if not isinstance(path, str) or not path:
        return "is not a file name"
    if path.startswith("/") or "\\" in path or "\0" in path or path[1:2] == ":":
        return "is absolute or not a plain POSIX path"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "has an empty, '.' or '..' part: it could resolve outside its directory"
    return None


def safe_relative_path(name: str) -> Path:
    """`name` as a relative path that cannot leave the directory it is joined to; ValueError otherwise."""
    problem = path_problem(name)
    if problem:
        raise ValueError(f"refusing {name!r}: it {problem}")
    return Path(name)


def _list_s3_sizes(uri: str) -> dict[str, int]:
    """Every object under an S3 "directory": its path relative to `uri` and its size."""
    return {name: item.size for name, item in list_s3_objects(uri).items()}


def _list_s3(uri: str) -> list[str]:
    return list(_list_s3_sizes(uri))


def list_dirs(uri: str) -> list[str]:
    """Names of the immediate subdirectories of a local directory or S3 prefix."""
    if not is_s3(uri):
        root = Path(uri)
        return sorted(path.name for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    return sorted({key.split("/", 1)[0] for key in _list_s3(uri) if "/" in key})


def _remove_file(uri: str) -> None:
    """Delete one file if it exists."""
    if not is_s3(uri):
        Path(uri).unlink(missing_ok=True)
        return
    bucket, key = split_s3(uri)
    client = _s3_client()
    with _s3_errors(uri, "delete"):
        client.delete_object(Bucket=bucket, Key=key)  # S3 deletes are idempotent


def remove_dir(uri: str) -> None:
    """Delete a directory; its manifest goes first, so a half-deleted one never looks complete."""
    if not is_s3(uri):
        manifest = Path(uri) / MANIFEST_NAME
        manifest.unlink(missing_ok=True)
        shutil.rmtree(uri, ignore_errors=True)
        return
    bucket, prefix = split_s3(uri)
    client = _s3_client()
    _remove_file(join(uri, MANIFEST_NAME))
    keys = [f"{prefix.rstrip('/')}/{key}" for key in _list_s3(uri)]
    with _s3_errors(uri, "delete"):
        for start in range(0, len(keys), 1000):
            client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]}
            )


# --- manifests -------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    files: list[FileEntry]
    created_at: str
    producer: str
    metadata: dict[str, Any]

    @property
    def total_size(self) -> int:
        """Bytes of all listed files."""
        return sum(entry.size for entry in self.files)

    @property
    def digest(self) -> str:
        """One sha256 over every file's path and hash: the directory's identity."""
        joined = "\n".join(f"{entry.path}:{entry.sha256}" for entry in self.files)
        return hashlib.sha256(joined.encode()).hexdigest()

    def to_json(self) -> str:
        return jsonout.dumps({**asdict(self), "digest": self.digest}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST_NAME) -> Manifest:
        """Parse a manifest; `source` names it in errors. Every entry is checked before any use."""
        try:
            data = json.loads(text)
            files = [FileEntry(**entry) for entry in data["files"]]
            manifest = cls(
                files=files,
                created_at=data["created_at"],
                producer=data["producer"],
                metadata=data.get("metadata", {}),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise UnsafeManifestError(f"{source} is not a valid manifest: {type(error).__name__}") from None
        seen: set[str] = set()
        for index, entry in enumerate(manifest.files):
            problem = _entry_problem(entry)
            if problem is None and entry.path in seen:
                problem = "is listed twice"
            if problem:
                raise UnsafeManifestError(f"{source}: files[{index}] path {entry.path!r} {problem}")
            seen.add(entry.path)
        return manifest


_SHA256_DIGITS = frozenset("0123456789abcdef")


def _entry_problem(entry: FileEntry) -> str | None:
    """Why a manifest entry cannot be trusted, or None.

    A manifest comes from wherever the directory lives (a bucket others may write), and its paths
    become local file names: only plain relative paths below the directory are accepted.
    """
    problem = path_problem(entry.path)
    if problem:
        return problem
    if entry.path == MANIFEST_NAME:
        return "is the manifest itself"
    if not isinstance(entry.size, int) or isinstance(entry.size, bool) or entry.size < 0:
        return f"has size {entry.size!r}, not a byte count"
    sha256 = entry.sha256
    if not isinstance(sha256, str) or len(sha256) != 64 or not _SHA256_DIGITS.issuperset(sha256):
        return "has a sha256 that is not 64 lowercase hex digits"
    return None


def _inside(root: Path, relative: str) -> Path:
    """`root / relative`, refused if it resolves (through a symlink, say) outside `root`."""
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        raise UnsafeManifestError(f"{relative!r} resolves outside {root}: refusing to write there")
    return path


def _fetch_checked(uri: str, entry: FileEntry, root: Path) -> None:
    """Download one manifest entry below `root`, checked against its sha256 before it takes its name."""
    final = _inside(root, entry.path)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.llmft-partial")
    download_file(join(uri, entry.path), partial)
    if sha256_file(partial) != entry.sha256:
        partial.unlink()
        raise IncompleteDirectoryError(f"{join(uri, entry.path)} does not match its sha256 in the manifest")
    os.replace(partial, final)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(
    local_dir: str | Path,
    producer: str,
    metadata: dict[str, Any] | None = None,
    sha256: Mapping[str, str] | None = None,
) -> Manifest:
    """The manifest of every file under `local_dir`.

    `sha256` maps relative paths to digests the caller computed while writing those files,
    so large outputs are not read again; every other file is hashed here.
    """
    root = Path(local_dir)
    known = sha256 or {}
    files = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name == MANIFEST_NAME:
            continue
        name = path.relative_to(root).as_posix()
        digest = known.get(name) or sha256_file(path)
        files.append(FileEntry(path=name, size=path.stat().st_size, sha256=digest))
    return Manifest(
        files=files,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        producer=producer,
        metadata=metadata or {},
    )


def publish_dir(
    local_dir: str | Path,
    uri: str,
    producer: str,
    metadata: dict[str, Any] | None = None,
    sha256: Mapping[str, str] | None = None,
) -> Manifest:
    """Copy a finished local directory to `uri` (if elsewhere) and write its manifest last.

    `sha256`: digests of some of its files, computed while they were written (see `build_manifest`).
    """
    manifest = build_manifest(local_dir, producer, metadata, sha256)
    same_place = not is_s3(uri) and Path(uri).resolve() == Path(local_dir).resolve()
    if not same_place:
        # An earlier manifest at `uri` would vouch for a mix of old and new files while
        # they are copied (or forever, if the copy fails): drop it before the first file.
        _remove_file(join(uri, MANIFEST_NAME))
        for entry in manifest.files:
            upload_file(Path(local_dir) / entry.path, join(uri, entry.path))
    write_text(join(uri, MANIFEST_NAME), manifest.to_json())
    log.info("published %d files to %s", len(manifest.files), uri)
    return manifest


def _require_present(uri: str) -> None:
    """Say plainly when nothing is at `uri`, rather than that its manifest is missing."""
    if not is_s3(uri):
        problem = local_path_problem(uri, "directory")
        if problem:
            raise MissingDirectoryError(f"{uri} {problem}")
    elif not exists(uri):
        raise MissingDirectoryError(f"{uri} does not exist (no objects under that prefix)")


def read_manifest(uri: str) -> Manifest:
    manifest_uri = join(uri, MANIFEST_NAME)
    if not exists(manifest_uri):
        _require_present(uri)
        raise IncompleteDirectoryError(
            f"{uri} has no {MANIFEST_NAME}: it is incomplete (its writer did not finish) "
            "or not an llmft output"
        )
    return Manifest.from_json(read_text(manifest_uri), source=manifest_uri)


def require_complete(uri: str) -> Manifest:
    """Return the manifest of a complete directory; raise if any listed file is missing or resized."""
    manifest = read_manifest(uri)
    if not is_s3(uri):
        for entry in manifest.files:
            path = Path(uri) / entry.path
            if not path.is_file() or path.stat().st_size != entry.size:
                raise IncompleteDirectoryError(f"{path} is missing or does not match {MANIFEST_NAME}")
    else:
        present = _list_s3_sizes(uri)
        missing = [entry.path for entry in manifest.files if present.get(entry.path) != entry.size]
        if missing:
            raise IncompleteDirectoryError(
                f"{uri}: {len(missing)} files listed in its manifest are missing or resized: {missing[:5]}"
            )
    return manifest


def localize_dir(uri: str, cache_root: str | Path | None = None) -> Path:
    """Return a local directory holding the complete directory at `uri` (downloaded if on S3)."""
    manifest = require_complete(uri)
    if not is_s3(uri):
        return Path(uri)
    cache_root = Path(cache_root or os.environ.get("LLMFT_CACHE", tempfile.gettempdir()))
    local = cache_root / "llmft-cache" / manifest.digest
    if (local / MANIFEST_NAME).exists():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=local.parent, prefix=".staging-"))
    try:
        for entry in manifest.files:
            _fetch_checked(uri, entry, staging)
        (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        try:
            staging.rename(local)
        except OSError:
            if not (local / MANIFEST_NAME).exists():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return local


# Present in a directory while `download_dir` fills it: what is there is an interrupted copy, safe to clear.
DOWNLOAD_MARKER = ".llmft-download"


def download_dir(uri: str, local_dir: str | Path) -> Manifest:
    """Copy the complete directory at `uri` to exactly `local_dir`, each file checked against its sha256.

    For readers that need the files at a fixed path (a Triton repository whose engine is opened by
    absolute path), where `localize_dir`'s digest-named cache will not do. The manifest is written last,
    so an interrupted copy never looks complete. While copying, `DOWNLOAD_MARKER` marks the directory as
    ours: a rerun (an init container restarted after a crash) clears what the interrupted copy left and
    starts over. A directory that already holds this manifest's files is left as it is; any other
    non-empty directory is refused, so a mistyped target is never wiped.
    """
    manifest = require_complete(uri)  # refuses a source without a manifest, or with files missing
    target = Path(local_dir)
    target.mkdir(parents=True, exist_ok=True)
    marker = target / DOWNLOAD_MARKER
    if (target / MANIFEST_NAME).is_file() and not marker.exists():
        present = Manifest.from_json(
            (target / MANIFEST_NAME).read_text(encoding="utf-8"), source=str(target / MANIFEST_NAME)
        )
        if present.digest == manifest.digest:
            require_complete(str(target))
            log.info("%s already holds %s (digest %s)", target, uri, manifest.digest)
            return manifest
    leftovers = list(target.iterdir())
    if leftovers and not marker.exists():
        raise FileExistsError(
            f"{target} is not empty and holds neither this repository nor an interrupted copy (no "
            f"{DOWNLOAD_MARKER}): refusing to overwrite its {len(leftovers)} entries with {uri}"
        )
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path != marker:
            path.unlink()
    marker.write_text(f"copying {uri}\n", encoding="utf-8")
    for entry in manifest.files:
        _fetch_checked(uri, entry, target)
    (target / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    marker.unlink()  # after the manifest: a crash in between leaves the marker, and a rerun redoes the copy
    log.info(
        "copied %d files (%d bytes) from %s to %s", len(manifest.files), manifest.total_size, uri, target
    )
    return manifest


def localize_file(uri: str, cache_root: str | Path | None = None) -> Path:
    """Return a local path for a single file (downloaded if on S3)."""
    if not is_s3(uri):
        problem = local_path_problem(uri, "file")
        if problem:
            raise FileNotFoundError(f"input file {uri} {problem}")
        return Path(uri)
    cache_root = Path(cache_root or os.environ.get("LLMFT_CACHE", tempfile.gettempdir()))
    bucket, key = split_s3(uri)
    return download_file(uri, cache_root / "llmft-cache" / "files" / bucket / key)

"""Resolve the model a step is given to a local, checked Hugging Face checkpoint directory.

Users arrive with models as they have them, so every step that takes a model accepts:

- an llmft directory (with `_MANIFEST.json`, local or s3://): checked against its manifest and
  localized the way every llmft output is (`storage.localize_dir`);
- a plain Hugging Face checkpoint directory (local or s3://), as `save_pretrained` or
  `huggingface-cli download` leave it: no manifest, so it is checked by Hugging Face's own
  completeness rules instead (see `check_checkpoint`);
- a Hub id, `hf://org/name[@revision]`: fetched with `huggingface_hub.snapshot_download` into one
  cache (`LLMFT_MODEL_CACHE`, else Hugging Face's default), resolved to the commit it names, then
  checked like a plain directory.

Whatever the source, the result carries a digest that lineage records: the manifest digest of an
llmft directory; the same formula (sha256 over every file's path and sha256) for a plain directory,
so a plain directory and its `llmft model import` copy have one digest; the commit sha for the Hub.

Every directory is also checked as a checkpoint, manifest or not: a curated dataset passed as a
model is refused with "not a Hugging Face checkpoint: no config.json in <uri>", before any
download and before a tokenizer library's own message could confuse the user.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import jsonout, storage

log = logging.getLogger(__name__)

HUB_SCHEME = "hf://"
CONFIG_FILE = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_INDEX = "pytorch_model.bin.index.json"
# Files a tokenizer can be loaded from on its own.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# tokenizer_config.json names the class; one of these holds the vocabulary it loads.
VOCABULARY_FILES = ("vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")
# Where this module records what it knows about a directory it wrote (hidden: never part of the model).
SOURCE_RECORD = ".llmft-source.json"
# A larger header is not a safetensors file (the format caps it at 100 MB).
_MAX_SAFETENSORS_HEADER = 100_000_000
_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.(?P<ext>safetensors|bin)$")
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)(?:@(?P<revision>[^\s@]+))?$")
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# Hub files no step loads: other frameworks' weights and original (non-HF) checkpoints, often as
# large as the model itself.
_HUB_IGNORED = (
    "original/*",
    "*.pth",
    "*.gguf",
    "*.onnx",
    "*.onnx_data",
    "onnx/*",
    "*.msgpack",
    "*.h5",
    "*.ot",
    "*.tflite",
    "coreml/*",
)
# With safetensors weights present, the same weights as pickles are not downloaded too.
_PICKLED_WEIGHTS = ("pytorch_model*.bin", PYTORCH_INDEX)


# The help of every step's model parameter (CLI flag and config field).
MODEL_HELP = (
    "a Hugging Face checkpoint directory (path or s3://; an llmft manifest is optional) "
    "or a Hub id hf://org/name[@revision] (token from HF_TOKEN)"
)
BASE_MODEL_HELP = f"Base model: {MODEL_HELP}."


class ModelSourceError(ValueError):
    """A model source cannot be used: not a checkpoint, incomplete, or not reachable."""


class ModelNotFoundError(ModelSourceError):
    """A model source does not exist: no such directory, prefix, Hub repository or revision."""


@dataclass(frozen=True)
class ModelSource:
    """A model ready to load: where it came from, where it lies here, and its identity for lineage."""

    uri: str
    local_dir: Path
    digest: str
    revision: str | None = None  # the Hub commit sha; None for directories

    def lineage(self) -> dict[str, str]:
        """What a step records about its base model: the URI given, its digest and Hub commit."""
        recorded = {"base_model": self.uri, "base_model_digest": self.digest}
        if self.revision:
            recorded["base_model_revision"] = self.revision
        return recorded


def resolve_model(uri: str, cache_root: str | Path | None = None) -> ModelSource:
    """Return a local, complete checkpoint directory for any accepted model source (see module doc).

    `cache_root` holds downloads and digest records; default `LLMFT_MODEL_CACHE`, else Hugging
    Face's cache for Hub models and `LLMFT_CACHE` (or the temp directory) for S3 ones.
    """
    uri = uri.strip()
    if not uri:
        raise ModelSourceError("no model given: pass a checkpoint directory, s3:// URI or hf://org/name")
    if uri.startswith(HUB_SCHEME):
        return _resolve_hub(uri, cache_root)
    if storage.is_s3(uri):
        return _resolve_s3(uri, cache_root)
    return _resolve_local(uri, cache_root)


# --- completeness, the way Hugging Face defines it ---------------------------------------------


@dataclass(frozen=True)
class CheckpointFiles:
    """A directory's files (relative names -> sizes) and how to read them, local or on S3."""

    uri: str
    sizes: Mapping[str, int]
    read_head: Callable[[str, int], bytes]  # (name, n_bytes) -> the file's first n_bytes

    def read_json(self, name: str) -> Any:
        raw = self.read_head(name, self.sizes[name])
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelSourceError(f"{_where(self.uri, name)} is not valid JSON: {error}") from error


def _where(uri: str, name: str) -> str:
    return storage.join(uri, name)


def check_checkpoint(files: CheckpointFiles) -> None:
    """Refuse a directory that Hugging Face would not load as a whole causal-LM checkpoint.

    Checks config.json; every shard named by an index (and every `-NNNNN-of-MMMMM` shard) present;
    each safetensors file as long as its own header says; at least one weights file; a tokenizer.
    The message names the missing or short file.
    """
    uri, sizes = files.uri, files.sizes
    if CONFIG_FILE not in sizes:
        raise ModelSourceError(f"not a Hugging Face checkpoint: no {CONFIG_FILE} in {uri}")
    for index_name in (SAFETENSORS_INDEX, PYTORCH_INDEX):
        if index_name in sizes:
            _check_index(files, index_name)
    _check_numbered_shards(uri, sizes)
    weights = [name for name in sizes if "/" not in name and _is_weights_file(name)]
    if not weights:
        raise ModelSourceError(
            f"{uri} has no weights file: expected model.safetensors, model-00001-of-0000N.safetensors "
            "(with model.safetensors.index.json) or pytorch_model.bin"
        )
    for name in sorted(weights):
        if name.endswith(".safetensors"):
            _check_safetensors(files, name)
    _check_tokenizer(uri, sizes)


def _is_weights_file(name: str) -> bool:
    return name.endswith(".safetensors") or (name.startswith("pytorch_model") and name.endswith(".bin"))


def _check_index(files: CheckpointFiles, index_name: str) -> None:
    index = files.read_json(index_name)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelSourceError(f"{_where(files.uri, index_name)} has no weight_map: the index is damaged")
    for shard in sorted(set(map(str, weight_map.values()))):
        if shard not in files.sizes:
            raise ModelSourceError(
                f"{files.uri} is incomplete: shard {shard} named by {index_name} is missing "
                "(download it again)"
            )


def _check_numbered_shards(uri: str, sizes: Mapping[str, int]) -> None:
    """model-00002-of-00004.safetensors implies shards 1 to 4, index or not."""
    for name in sizes:
        match = _SHARD_NAME.match(name)
        if not match:
            continue
        count = int(match["count"])
        for number in range(1, count + 1):
            sibling = f"{match['stem']}-{number:05d}-of-{count:05d}.{match['ext']}"
            if sibling not in sizes:
                raise ModelSourceError(f"{uri} is incomplete: shard {sibling} is missing (download it again)")


def _check_safetensors(files: CheckpointFiles, name: str) -> None:
    """8-byte header length + JSON header + data: the file must end where the header says."""
    size = files.sizes[name]
    where = _where(files.uri, name)
    if size < 8:
        raise ModelSourceError(f"{where} is truncated: {size} bytes, shorter than a safetensors header")
    (header_length,) = struct.unpack("<Q", files.read_head(name, 8))
    if header_length > _MAX_SAFETENSORS_HEADER or 8 + header_length > size:
        raise ModelSourceError(
            f"{where} is truncated or not a safetensors file: its header claims {header_length} bytes "
            f"in a file of {size} bytes"
        )
    try:
        header = json.loads(files.read_head(name, 8 + header_length)[8:].decode("utf-8"))
        ends = [
            int(entry["data_offsets"][1])
            for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict)
        ]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as error:
        raise ModelSourceError(f"{where} has a damaged safetensors header: {error}") from error
    expected = 8 + header_length + max(ends, default=0)
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise ModelSourceError(
            f"{where} is {state}: {size} bytes, its header says {expected} (download it again)"
        )


def _check_tokenizer(uri: str, sizes: Mapping[str, int]) -> None:
    if any(name in sizes for name in TOKENIZER_FILES):
        return
    if "tokenizer_config.json" in sizes and (
        any(name in sizes for name in VOCABULARY_FILES) or any(n.endswith(".tiktoken") for n in sizes)
    ):
        return
    raise ModelSourceError(
        f"{uri} has no tokenizer: expected {' or '.join(TOKENIZER_FILES)}, or tokenizer_config.json with "
        f"a vocabulary file ({', '.join(VOCABULARY_FILES)})"
    )


# --- local directories ---------------------------------------------------------------------------


def _is_hidden(name: str) -> bool:
    """Tool metadata (.cache/huggingface/, .gitattributes, our own records) is not part of a model."""
    return any(part.startswith(".") for part in name.split("/"))


def list_model_files(root: Path) -> dict[str, int]:
    """Every file of a local model directory (symlinks followed, hidden files and the manifest left out)."""
    sizes = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if _is_hidden(name) or name == storage.MANIFEST_NAME or not path.is_file():
            continue
        sizes[name] = path.stat().st_size
    return sizes


def _local_files(root: Path, uri: str) -> CheckpointFiles:
    def read_head(name: str, n_bytes: int) -> bytes:
        with open(root / name, "rb") as handle:
            return handle.read(n_bytes)

    return CheckpointFiles(uri=uri, sizes=list_model_files(root), read_head=read_head)


def _default_cache_root(cache_root: str | Path | None) -> Path:
    if cache_root:
        return Path(cache_root)
    if os.environ.get("LLMFT_MODEL_CACHE"):
        return Path(os.environ["LLMFT_MODEL_CACHE"])
    return Path(os.environ.get("LLMFT_CACHE", tempfile.gettempdir())) / "llmft-cache"


def directory_digest(root: Path, cache_root: str | Path | None = None) -> str:
    """The manifest-formula digest of a plain directory, its file hashes cached by path, size and mtime.

    A multi-GB checkpoint is hashed once per machine; each later step re-hashes only changed files.
    """
    record_path = (
        _default_cache_root(cache_root)
        / "model-digests"
        / f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()}.json"
    )
    known: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):  # no record yet, or a damaged one: hash again
        known = json.loads(record_path.read_text(encoding="utf-8"))
    entries, record = [], {}
    files = list_model_files(root)
    if not known:
        log.info(
            "hashing %d files (%.1f GB) of %s for its digest (once)",
            len(files),
            sum(files.values()) / 1e9,
            root,
        )
    for name, size in files.items():
        stat = (root / name).stat()
        cached = known.get(name)
        unchanged = isinstance(cached, dict) and (cached.get("size"), cached.get("mtime_ns")) == (
            size,
            stat.st_mtime_ns,
        )
        sha256 = str(cached["sha256"]) if unchanged else storage.sha256_file(root / name)
        record[name] = {"size": size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
        entries.append(storage.FileEntry(path=name, size=size, sha256=sha256))
    try:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        staging = record_path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(jsonout.dumps(record), encoding="utf-8")
        staging.replace(record_path)
    except OSError as error:  # a read-only cache costs time later, not correctness
        log.warning("cannot record the digest of %s in %s: %s", root, record_path, error)
    return storage.Manifest(files=entries, created_at="", producer="", metadata={}).digest


def _resolve_local(uri: str, cache_root: str | Path | None) -> ModelSource:
    root = Path(uri)
    problem = storage.local_path_problem(root, "directory")
    if problem and not root.exists() and not root.is_symlink():
        raise ModelNotFoundError(f"model not found: {uri} does not exist")
    if problem:
        raise ModelSourceError(f"{uri} {problem}: a model is a checkpoint directory (with {CONFIG_FILE})")
    if (root / storage.MANIFEST_NAME).is_file():
        manifest = storage.require_complete(uri)
        check_checkpoint(_local_files(root, uri))
        return ModelSource(uri=uri, local_dir=root, digest=manifest.digest)
    check_checkpoint(_local_files(root, uri))
    return ModelSource(uri=uri, local_dir=root, digest=directory_digest(root, cache_root))


# --- S3 --------------------------------------------------------------------------------------------


def _s3_files(uri: str, objects: Mapping[str, storage.S3Object]) -> CheckpointFiles:
    sizes = {
        name: item.size
        for name, item in objects.items()
        if name and not name.endswith("/") and not _is_hidden(name) and name != storage.MANIFEST_NAME
    }
    return CheckpointFiles(
        uri=uri, sizes=sizes, read_head=lambda name, n: storage.read_s3_head(storage.join(uri, name), n)
    )


def _resolve_s3(uri: str, cache_root: str | Path | None) -> ModelSource:
    objects = storage.list_s3_objects(uri)
    if not objects:
        raise ModelNotFoundError(f"model not found: no objects under {uri}")
    for name in objects:  # every key, hidden or not: a key that leaves the directory is an attack
        if not name.rstrip("/"):
            continue  # the "folder" object some consoles create for the prefix itself
        try:
            storage.safe_relative_path(name.rstrip("/"))
        except ValueError as error:
            raise ModelSourceError(f"{uri}: {error}") from error
    files = _s3_files(uri, objects)
    # Checked from the listing and ranged reads of the headers, before gigabytes are downloaded.
    check_checkpoint(files)
    if storage.MANIFEST_NAME in objects:
        manifest = storage.require_complete(uri)
        local = storage.localize_dir(uri, cache_root=cache_root)
        return ModelSource(uri=uri, local_dir=local, digest=manifest.digest)
    local, digest = _download_plain(uri, {name: objects[name] for name in files.sizes}, cache_root)
    check_checkpoint(_local_files(local, uri))
    return ModelSource(uri=uri, local_dir=local, digest=digest)


def _download_plain(
    uri: str, objects: Mapping[str, storage.S3Object], cache_root: str | Path | None
) -> tuple[Path, str]:
    """Copy a plain S3 checkpoint into a cache directory named by its listing (names, sizes, ETags).

    The copy is staged and renamed into place once whole, so an interrupted copy is never reused;
    a replaced object changes the listing, hence the directory.
    """
    listing = "\n".join(f"{name}:{item.size}:{item.etag}" for name, item in sorted(objects.items()))
    key = hashlib.sha256(f"{uri}\n{listing}".encode()).hexdigest()[:32]
    cache = _default_cache_root(cache_root) / "models"
    local = cache / key
    record = local / SOURCE_RECORD
    if record.is_file():
        log.info("%s already downloaded to %s", uri, local)
        return local, str(json.loads(record.read_text(encoding="utf-8"))["digest"])
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".staging-"))
    try:
        entries = []
        for name in sorted(objects):
            target = staging / storage.safe_relative_path(name)
            storage.download_file(storage.join(uri, name), target)
            size, sha256 = target.stat().st_size, storage.sha256_file(target)
            entries.append(storage.FileEntry(path=name, size=size, sha256=sha256))
        digest = storage.Manifest(files=entries, created_at="", producer="", metadata={}).digest
        (staging / SOURCE_RECORD).write_text(jsonout.dumps({"uri": uri, "digest": digest}), encoding="utf-8")
        try:
            staging.rename(local)
        except OSError:
            if not record.is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("downloaded %d files of %s to %s", len(objects), uri, local)
    return local, digest


# --- the Hugging Face Hub --------------------------------------------------------------------------


def parse_hub_uri(uri: str) -> tuple[str, str]:
    """`hf://org/name[@revision]` -> (repo id, revision; "main" when none is given)."""
    match = _HUB_ID.match(uri.removeprefix(HUB_SCHEME))
    if not match:
        raise ModelSourceError(
            f"{uri!r} is not a Hub model id: expected hf://org/name or hf://org/name@revision"
        )
    return match["repo"], match["revision"] or "main"


def hub_ignore_patterns(names: Iterable[str]) -> list[str]:
    """Files of a Hub repository that no step loads (decided from its file names alone)."""
    names = list(names)
    patterns = list(_HUB_IGNORED)
    if any(name.endswith(".safetensors") and "/" not in name for name in names):
        patterns.extend(_PICKLED_WEIGHTS)
    return patterns


def _hub_token() -> str | None:
    """HF_TOKEN from the environment (a Kubernetes Secret on the cluster); never a parameter."""
    return os.environ.get("HF_TOKEN") or None


def _resolve_hub(uri: str, cache_root: str | Path | None) -> ModelSource:
    repo_id, revision = parse_hub_uri(uri)
    try:
        import huggingface_hub  # noqa: F401 - only to fail early with a clear message
    except ImportError as error:
        raise ModelSourceError(
            f"{uri}: hf:// models need huggingface_hub, which this image lacks (pip install 'llmft[train]')"
        ) from error
    cache_dir = str(cache_root or os.environ.get("LLMFT_MODEL_CACHE") or "") or None
    snapshot = _cached_snapshot(repo_id, revision, cache_dir)
    if snapshot is None:
        snapshot = _download_snapshot(uri, repo_id, revision, cache_dir)
    commit = snapshot.name  # huggingface_hub names snapshot folders by commit sha
    if not _COMMIT_SHA.match(commit):
        raise ModelSourceError(f"{uri}: the Hub cache returned {snapshot}, which is not named by a commit")
    check_checkpoint(_local_files(snapshot, uri))
    log.info("%s is commit %s (%s)", uri, commit, snapshot)
    return ModelSource(uri=uri, local_dir=snapshot, digest=commit, revision=commit)


def _cached_snapshot(repo_id: str, revision: str, cache_dir: str | None) -> Path | None:
    """The complete cached snapshot of this revision, found without a request; None if there is none.

    A branch resolves to the commit the cache recorded for it, so train, evaluate and export on
    one cache use one commit; pin `@<commit>` to pick one explicitly.
    """
    try:
        from huggingface_hub import get_cached_repo_tree, snapshot_download
        from huggingface_hub.errors import CachedRepoTreeNotFoundError, LocalEntryNotFoundError
    except ImportError:  # an image's older huggingface_hub (< 2.4) keeps no tree listing: ask the Hub
        return None
    try:
        tree = get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache_dir)
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=True,
            ignore_patterns=hub_ignore_patterns(entry.path for entry in tree),
        )
    except (CachedRepoTreeNotFoundError, LocalEntryNotFoundError, OSError) as error:
        log.debug("%s@%s is not cached whole: %s", repo_id, revision, error)
        return None
    return Path(path)


def _hub_endpoint() -> str | None:
    # Read at call time: huggingface_hub reads HF_ENDPOINT once, at import.
    return os.environ.get("HF_ENDPOINT") or None


@contextlib.contextmanager
def _hub_errors(uri: str, revision: str) -> Iterator[None]:
    """Turn huggingface_hub's and the network's exceptions into ModelSourceErrors that say what to do.

    Whether HF_TOKEN is set is said; its value never is.
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    token_note = "HF_TOKEN is set" if _hub_token() else "HF_TOKEN is not set"
    try:
        yield
    except GatedRepoError as error:  # before RepositoryNotFoundError: it is one
        raise ModelSourceError(
            f"{uri} is gated: accept its terms on the Hub and give a token with access in HF_TOKEN "
            f"({token_note})"
        ) from error
    except RevisionNotFoundError as error:
        raise ModelNotFoundError(
            f"model not found: {uri}: the repository has no revision {revision!r}"
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelNotFoundError(
            f"model not found: {uri}: no such Hub repository, or it is private and the token cannot "
            f"read it ({token_note})"
        ) from error
    except RemoteEntryNotFoundError as error:
        raise ModelNotFoundError(f"{uri}: a file listed by the Hub is missing: {error}") from error
    except LocalEntryNotFoundError as error:
        raise ModelSourceError(
            f"{uri} is not in the model cache and cannot be downloaded (offline, or the Hub is unreachable): "
            f"{error}"
        ) from error
    except HfHubHTTPError as error:
        raise ModelSourceError(f"cannot download {uri} from the Hub: {error}") from error
    except Exception as error:
        if not _is_network_error(error):
            raise
        offline = " (HF_HUB_OFFLINE is set, and it is not in the model cache)" if _hub_offline() else ""
        raise ModelSourceError(
            f"cannot reach the Hub at {_hub_endpoint() or 'https://huggingface.co'} for {uri}{offline}: "
            f"{type(error).__name__}: {error}"
        ) from error


def _download_snapshot(uri: str, repo_id: str, revision: str, cache_dir: str | None) -> Path:
    from huggingface_hub import HfApi, snapshot_download

    endpoint, token = _hub_endpoint(), _hub_token()
    with _hub_errors(uri, revision):
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision)
        names = [sibling.rfilename for sibling in info.siblings or []]
        log.info("downloading %s (%s) from %s", uri, info.sha, endpoint or "the Hugging Face Hub")
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            endpoint=endpoint,
            ignore_patterns=hub_ignore_patterns(names),
        )
    return Path(path)


def read_hub_config(uri: str, cache_root: str | Path | None = None) -> dict[str, Any]:
    """config.json of a Hub model, and nothing else: what a dry run's plan needs, without the weights."""
    from huggingface_hub import hf_hub_download

    repo_id, revision = parse_hub_uri(uri)
    cache_dir = str(cache_root or os.environ.get("LLMFT_MODEL_CACHE") or "") or None
    from huggingface_hub.errors import RemoteEntryNotFoundError

    with _hub_errors(uri, revision):
        try:
            path = hf_hub_download(
                repo_id,
                CONFIG_FILE,
                revision=revision,
                cache_dir=cache_dir,
                token=_hub_token(),
                endpoint=_hub_endpoint(),
            )
        except RemoteEntryNotFoundError as error:
            raise ModelSourceError(f"not a Hugging Face checkpoint: no {CONFIG_FILE} in {uri}") from error
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelSourceError(f"{uri}: {CONFIG_FILE} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ModelSourceError(f"{uri}: {CONFIG_FILE} does not hold a JSON object")
    return config


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _is_network_error(error: Exception) -> bool:
    """Connection, timeout and offline-mode errors, from the OS or huggingface_hub's HTTP client."""
    return isinstance(error, OSError) or type(error).__module__.split(".")[0] in (
        "httpx",
        "httpx2",
        "httpcore",
    )

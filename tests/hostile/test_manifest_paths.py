"""A manifest is data from wherever a directory lives: a bucket others can write.

Its paths become local file names in `localize_dir` and `download_dir` (every step that reads
s3://, and the rollout's fetch of a model repository). None may land outside the destination,
and no file takes its final name before its sha256 is checked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from components import storage
from components.storage import MANIFEST_NAME, IncompleteDirectoryError, UnsafeManifestError

BODY = b"weights\n"
DIGEST = hashlib.sha256(BODY).hexdigest()


def _manifest(*entries: dict) -> str:
    return json.dumps({"files": list(entries), "created_at": "2026-12-06T00:00:00+00:00", "producer": "x"})


def _entry(path: str, size: int = len(BODY), sha256: str = DIGEST) -> dict:
    return {"path": path, "size": size, "sha256": sha256}


def _put(bucket, key: str, body: bytes) -> None:
    bucket.client.put_object(Bucket=bucket.name, Key=key, Body=body)


HOSTILE_PATHS = [
    "../../escape.txt",
    "../escape.txt",
    "a/../../escape.txt",
    "/tmp/escape.txt",
    "./escape.txt",
    "a//escape.txt",
    "a\\..\\..\\escape.txt",
    "C:escape.txt",
    "",
    MANIFEST_NAME,
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_manifest_path_is_refused_before_any_download(s3_bucket, tmp_path: Path, path: str) -> None:
    _put(s3_bucket, "model/config.json", BODY)
    _put(s3_bucket, f"model/{MANIFEST_NAME}", _manifest(_entry("config.json"), _entry(path)).encode())
    target = tmp_path / "deep" / "target"
    with pytest.raises(UnsafeManifestError, match=r"files\[1\] path") as error:
        storage.download_dir(s3_bucket.uri("model"), target)
    assert f"s3://{s3_bucket.name}/model/{MANIFEST_NAME}" in str(error.value)
    with pytest.raises(UnsafeManifestError):
        storage.localize_dir(s3_bucket.uri("model"))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], f"files written while refusing: {written}"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (_entry("a.bin", size=-1), "not a byte count"),
        (_entry("a.bin", size=True), "not a byte count"),
        (_entry("a.bin", sha256="0" * 63), "64 lowercase hex"),
        (_entry("a.bin", sha256="Z" * 64), "64 lowercase hex"),
    ],
)
def test_malformed_entries_are_refused(tmp_path: Path, entry: dict, problem: str) -> None:
    (tmp_path / MANIFEST_NAME).write_text(_manifest(entry))
    with pytest.raises(UnsafeManifestError, match=problem):
        storage.require_complete(str(tmp_path))


def test_a_path_listed_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text(_manifest(_entry("a.bin"), _entry("a.bin")))
    with pytest.raises(UnsafeManifestError, match="listed twice"):
        storage.require_complete(str(tmp_path))


@pytest.mark.parametrize("text", ["not json", "[]", '{"files": [{"path": "a"}]}', '{"files": 3}'])
def test_a_manifest_that_is_not_one_names_its_file(tmp_path: Path, text: str) -> None:
    (tmp_path / MANIFEST_NAME).write_text(text)
    with pytest.raises(UnsafeManifestError, match=rf"{MANIFEST_NAME} is not a valid manifest"):
        storage.require_complete(str(tmp_path))


def test_a_local_manifest_pointing_outside_is_refused_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(BODY)
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / MANIFEST_NAME).write_text(_manifest(_entry("../secret.txt")))
    with pytest.raises(UnsafeManifestError, match=r"'\.\./secret\.txt' has an empty, '\.' or '\.\.' part"):
        storage.localize_dir(str(directory))


def test_a_file_that_fails_its_digest_never_takes_its_name(s3_bucket, tmp_path: Path) -> None:
    _put(s3_bucket, "repo/ok.txt", BODY)
    _put(s3_bucket, "repo/bad.txt", b"tampered\n")
    manifest = _manifest(_entry("ok.txt"), _entry("bad.txt", size=len(b"tampered\n")))
    _put(s3_bucket, f"repo/{MANIFEST_NAME}", manifest.encode())
    target = tmp_path / "target"
    with pytest.raises(IncompleteDirectoryError, match=r"bad\.txt does not match its sha256"):
        storage.download_dir(s3_bucket.uri("repo"), target)
    names = sorted(p.name for p in target.iterdir())
    assert "bad.txt" not in names and MANIFEST_NAME not in names
    assert not [name for name in names if name.endswith("llmft-partial")]
    # The marker stays: the directory reads as an interrupted copy, which a rerun clears.
    assert storage.DOWNLOAD_MARKER in names


def test_a_symlink_inside_the_target_cannot_redirect_a_download(s3_bucket, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "sub").symlink_to(outside, target_is_directory=True)
    _put(s3_bucket, "m/sub/x.bin", BODY)
    entry = storage.FileEntry(path="sub/x.bin", size=len(BODY), sha256=DIGEST)
    with pytest.raises(UnsafeManifestError, match="resolves outside"):
        storage._fetch_checked(s3_bucket.uri("m"), entry, staging)
    assert list(outside.iterdir()) == []

"""components/storage.py: URIs, manifests, local directories and S3 (a real moto server)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from components import storage
from components.storage import MANIFEST_NAME, IncompleteDirectoryError, Manifest

MIB = 1024 * 1024


def make_tree(root: Path) -> dict[str, bytes]:
    """A small directory with a nested file; returns relative path -> content."""
    files = {
        "config.json": b'{"a": 1}\n',
        "weights.bin": bytes(range(256)) * 40,
        "sub/dir/notes.txt": "héllo\n".encode(),
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return files


# --- URIs ------------------------------------------------------------------------------


def test_is_s3() -> None:
    assert storage.is_s3("s3://bucket/key")
    assert not storage.is_s3("/data/s3://x")
    assert not storage.is_s3("S3://bucket")  # the scheme is lower case, as boto3 and the AWS CLI write it
    assert not storage.is_s3("relative/path")


def test_join() -> None:
    assert storage.join("s3://b/prefix/", "/runs/", "r1", "train/") == "s3://b/prefix/runs/r1/train"
    assert storage.join("s3://b", "a/b", "c") == "s3://b/a/b/c"
    assert storage.join("/tmp/x", "runs", "r1") == str(Path("/tmp/x/runs/r1"))
    assert storage.join("rel", "a/b") == str(Path("rel") / "a" / "b")


def test_split_s3() -> None:
    assert storage.split_s3("s3://bucket/a/b.json") == ("bucket", "a/b.json")
    assert storage.split_s3("s3://bucket") == ("bucket", "")
    assert storage.split_s3("s3://bucket/") == ("bucket", "")
    with pytest.raises(ValueError, match="not an s3:// URI with a bucket"):
        storage.split_s3("s3:///key")


# --- local directories and manifests ---------------------------------------------------


def test_publish_in_place_and_require_complete(tmp_path: Path) -> None:
    files = make_tree(tmp_path)
    manifest = storage.publish_dir(tmp_path, str(tmp_path), producer="test", metadata={"k": "v"})
    assert [entry.path for entry in manifest.files] == sorted(files)
    for entry in manifest.files:
        assert entry.size == len(files[entry.path])
        assert entry.sha256 == hashlib.sha256(files[entry.path]).hexdigest()
    written = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert written["digest"] == manifest.digest and written["producer"] == "test"
    assert written["metadata"] == {"k": "v"}
    assert storage.require_complete(str(tmp_path)) == manifest
    assert storage.localize_dir(str(tmp_path)) == tmp_path  # local directories are used where they lie


def test_build_manifest_takes_the_digests_it_is_given_and_hashes_the_rest(tmp_path: Path) -> None:
    files = make_tree(tmp_path)
    named = sorted(files)[0]
    # A value no file has, to show the named file is not read again.
    manifest = storage.build_manifest(tmp_path, "test", sha256={named: "0" * 64})
    assert {entry.path: entry.sha256 for entry in manifest.files} == {
        path: "0" * 64 if path == named else hashlib.sha256(content).hexdigest()
        for path, content in files.items()
    }
    assert len(manifest.files) > 1


def test_manifest_digest_is_stable_and_content_addressed(tmp_path: Path) -> None:
    make_tree(tmp_path)
    first = storage.publish_dir(tmp_path, str(tmp_path), producer="a")
    # Publishing again (another time, producer and metadata) does not change the identity...
    second = storage.publish_dir(tmp_path, str(tmp_path), producer="b", metadata={"x": 1})
    assert second.digest == first.digest
    assert Manifest.from_json(second.to_json()).digest == first.digest
    # ...and the manifest never lists itself.
    assert MANIFEST_NAME not in {entry.path for entry in second.files}
    # Changing any byte, or renaming a file, does.
    (tmp_path / "config.json").write_bytes(b'{"a": 2}\n')
    changed = storage.publish_dir(tmp_path, str(tmp_path), producer="a")
    assert changed.digest != first.digest
    (tmp_path / "config.json").write_bytes(b'{"a": 1}\n')
    (tmp_path / "sub/dir/notes.txt").rename(tmp_path / "sub/dir/renamed.txt")
    assert storage.publish_dir(tmp_path, str(tmp_path), producer="a").digest != first.digest


def test_publish_to_another_local_directory(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    manifest = storage.publish_dir(tmp_path / "src", str(tmp_path / "dst" / "out"), producer="test")
    for name, content in files.items():
        assert (tmp_path / "dst" / "out" / name).read_bytes() == content
    assert storage.require_complete(str(tmp_path / "dst" / "out")).digest == manifest.digest
    assert not (tmp_path / "src" / MANIFEST_NAME).exists()  # the source is left as it was


def test_directory_without_manifest_is_refused(tmp_path: Path) -> None:
    make_tree(tmp_path)
    with pytest.raises(IncompleteDirectoryError, match=rf"{MANIFEST_NAME}: it is incomplete") as error:
        storage.require_complete(str(tmp_path))
    assert str(tmp_path) in str(error.value)
    with pytest.raises(IncompleteDirectoryError, match="incomplete"):
        storage.localize_dir(str(tmp_path))
    with pytest.raises(IncompleteDirectoryError, match=r"does-not-exist does not exist$"):
        storage.read_manifest(str(tmp_path / "does-not-exist"))


@pytest.mark.parametrize("damage", ["missing", "resized"])
def test_file_not_matching_the_manifest_is_refused(tmp_path: Path, damage: str) -> None:
    make_tree(tmp_path)
    storage.publish_dir(tmp_path, str(tmp_path), producer="test")
    target = tmp_path / "sub/dir/notes.txt"
    if damage == "missing":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes() + b"more")
    with pytest.raises(IncompleteDirectoryError, match=r"notes\.txt is missing or does not match"):
        storage.require_complete(str(tmp_path))


def test_failed_republish_leaves_no_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy that dies halfway must not sit under the previous, still valid-looking manifest."""
    make_tree(tmp_path / "v1")
    storage.publish_dir(tmp_path / "v1", str(tmp_path / "out"), producer="test")
    files = make_tree(tmp_path / "v2")
    (tmp_path / "v2" / "weights.bin").write_bytes(b"\x01" * len(files["weights.bin"]))  # same size
    real_upload = storage.upload_file
    copied: list[str] = []

    def dies_on_second_file(local_path: str | Path, uri: str) -> None:
        if copied:
            raise OSError("disk went away")
        copied.append(uri)
        real_upload(local_path, uri)

    monkeypatch.setattr(storage, "upload_file", dies_on_second_file)
    with pytest.raises(OSError, match="disk went away"):
        storage.publish_dir(tmp_path / "v2", str(tmp_path / "out"), producer="test")
    with pytest.raises(IncompleteDirectoryError):
        storage.require_complete(str(tmp_path / "out"))


def test_list_dirs_local(tmp_path: Path) -> None:
    for name in ("step-00000002", "step-00000001", "step-00000010"):
        (tmp_path / "ckpt" / name).mkdir(parents=True)
    (tmp_path / "ckpt" / "metrics.json").write_text("{}")
    assert storage.list_dirs(str(tmp_path / "ckpt")) == ["step-00000001", "step-00000002", "step-00000010"]
    assert storage.list_dirs(str(tmp_path / "nothing-here")) == []


def test_remove_dir_local_removes_the_manifest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path / "d")
    storage.publish_dir(tmp_path / "d", str(tmp_path / "d"), producer="test")
    real_rmtree = shutil.rmtree
    manifest_present_at_rmtree: list[bool] = []

    def spy(path, *args, **kwargs):
        manifest_present_at_rmtree.append((Path(path) / MANIFEST_NAME).exists())
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(storage.shutil, "rmtree", spy)
    storage.remove_dir(str(tmp_path / "d"))
    assert manifest_present_at_rmtree == [False]
    assert not (tmp_path / "d").exists()
    storage.remove_dir(str(tmp_path / "d"))  # removing what is gone is not an error


def test_local_text_and_files(tmp_path: Path) -> None:
    uri = str(tmp_path / "a" / "b" / "note.txt")
    storage.write_text(uri, "ünïcode\n")
    assert storage.read_text(uri) == "ünïcode\n"
    assert storage.exists(uri) and not storage.exists(str(tmp_path / "nope"))
    assert storage.localize_file(uri) == Path(uri)
    with pytest.raises(FileNotFoundError, match=r"input file .*nope\.jsonl does not exist"):
        storage.localize_file(str(tmp_path / "nope.jsonl"))


# --- S3 (moto server) --------------------------------------------------------------------


def test_s3_text_round_trip_and_exists(s3_bucket) -> None:
    uri = s3_bucket.uri("run2/notes/ünï.txt")
    storage.write_text(uri, "line one\nlíne two\n")
    assert storage.read_text(uri) == "line one\nlíne two\n"
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="run2/notes/ünï.txt")["Body"].read()
    assert body == "line one\nlíne two\n".encode()
    # Files and directories exist as they would on a local disk; a shared name prefix is not enough.
    assert storage.exists(uri)
    assert storage.exists(s3_bucket.uri("run2"))
    assert storage.exists(s3_bucket.uri("run2/"))
    assert storage.exists(s3_bucket.uri("run2/notes"))
    assert not storage.exists(s3_bucket.uri("run"))
    assert not storage.exists(s3_bucket.uri("run2/notes/ün"))
    assert not storage.exists(s3_bucket.uri("elsewhere"))
    assert storage.exists(s3_bucket.uri())


def test_s3_publish_require_and_localize(s3_bucket, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    uri = s3_bucket.uri("models/m1")
    manifest = storage.publish_dir(tmp_path / "src", uri, producer="test", metadata={"step": 3})
    keys = {
        item["Key"]
        for item in s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="models/m1/")["Contents"]
    }
    assert keys == {f"models/m1/{name}" for name in [*files, MANIFEST_NAME]}
    complete = storage.require_complete(uri)
    assert complete.digest == manifest.digest and complete.metadata == {"step": 3}

    local = storage.localize_dir(uri)
    assert local == Path(os.environ["LLMFT_CACHE"]) / "llmft-cache" / manifest.digest
    for name, content in files.items():
        assert (local / name).read_bytes() == content
    assert storage.require_complete(str(local)).digest == manifest.digest
    # A second call uses the verified copy instead of downloading again.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage, "download_file", lambda *a, **k: pytest.fail("downloaded again"))
        assert storage.localize_dir(uri) == local
    # Nothing but finished copies is left in the cache.
    assert [path.name for path in local.parent.iterdir()] == [manifest.digest]


def test_s3_localize_refuses_a_tampered_object(s3_bucket, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    uri = s3_bucket.uri("tampered")
    manifest = storage.publish_dir(tmp_path / "src", uri, producer="test")
    # Same size, other bytes: only the sha256 check can tell.
    forged = bytes(reversed(files["weights.bin"]))
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="tampered/weights.bin", Body=forged)
    storage.require_complete(uri)  # sizes still match
    with pytest.raises(IncompleteDirectoryError, match=r"weights\.bin does not match its sha256"):
        storage.localize_dir(uri)
    cache = Path(os.environ["LLMFT_CACHE"]) / "llmft-cache"
    assert not (cache / manifest.digest).exists()
    assert list(cache.iterdir()) == []  # the half-verified download was cleaned up


@pytest.mark.parametrize("damage", ["missing", "resized"])
def test_s3_require_complete_refuses_missing_or_resized(s3_bucket, tmp_path: Path, damage: str) -> None:
    make_tree(tmp_path / "src")
    uri = s3_bucket.uri("dmg")
    storage.publish_dir(tmp_path / "src", uri, producer="test")
    if damage == "missing":
        s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key="dmg/sub/dir/notes.txt")
    else:
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="dmg/sub/dir/notes.txt", Body=b"x")
    with pytest.raises(IncompleteDirectoryError, match=r"missing or resized: \['sub/dir/notes.txt'\]"):
        storage.require_complete(uri)
    with pytest.raises(IncompleteDirectoryError):
        storage.localize_dir(uri)


def test_s3_directory_without_manifest_is_refused(s3_bucket) -> None:
    storage.write_text(s3_bucket.uri("partial/a.txt"), "a")
    with pytest.raises(IncompleteDirectoryError, match=rf"partial has no {MANIFEST_NAME}"):
        storage.require_complete(s3_bucket.uri("partial"))


def test_s3_multipart_round_trip(s3_bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "_MULTIPART_THRESHOLD", 5 * MIB)
    monkeypatch.setattr(storage, "_MULTIPART_CHUNK", 5 * MIB)  # S3's smallest part
    source = tmp_path / "big.bin"
    payload = os.urandom(11 * MIB)
    source.write_bytes(payload)
    uri = s3_bucket.uri("big/big.bin")
    storage.upload_file(source, uri)
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="big/big.bin")
    assert head["ContentLength"] == len(payload)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts (5+5+1 MiB)
    copy = storage.download_file(uri, tmp_path / "back" / "big.bin")
    assert copy.read_bytes() == payload
    # The same through a published directory, verified by sha256 on the way back.
    (tmp_path / "dir").mkdir()
    shutil.move(source, tmp_path / "dir" / "big.bin")
    manifest = storage.publish_dir(tmp_path / "dir", s3_bucket.uri("bigdir"), producer="test")
    local = storage.localize_dir(s3_bucket.uri("bigdir"))
    assert (local / "big.bin").read_bytes() == payload
    assert manifest.files[0].sha256 == hashlib.sha256(payload).hexdigest()


def test_s3_localize_file(s3_bucket) -> None:
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="raw/data.jsonl", Body=b'{"a": 1}\n')
    local = storage.localize_file(s3_bucket.uri("raw/data.jsonl"))
    assert local.read_bytes() == b'{"a": 1}\n'
    assert local.is_relative_to(Path(os.environ["LLMFT_CACHE"]))


def test_s3_list_dirs(s3_bucket, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    for name in ("step-00000002", "step-00000001"):
        storage.publish_dir(tmp_path / "src", s3_bucket.uri("ckpt", name), producer="test")
    storage.write_text(s3_bucket.uri("ckpt/metrics.json"), "{}")
    storage.write_text(s3_bucket.uri("ckpt-other/step-9/a.txt"), "a")
    assert storage.list_dirs(s3_bucket.uri("ckpt")) == ["step-00000001", "step-00000002"]
    assert storage.list_dirs(s3_bucket.uri("ckpt/")) == ["step-00000001", "step-00000002"]
    assert storage.list_dirs(s3_bucket.uri("nothing")) == []


def test_s3_remove_dir_removes_the_manifest_first(s3_bucket, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    for name in ("step-1", "step-10"):
        storage.publish_dir(tmp_path / "src", s3_bucket.uri("ckpt", name), producer="test")
    client = storage._s3_client()
    calls: list[tuple[str, list[str]]] = []

    class Recording:
        def __getattr__(self, name):
            return getattr(client, name)

        def delete_object(self, **kwargs):
            calls.append(("delete_object", [kwargs["Key"]]))
            return client.delete_object(**kwargs)

        def delete_objects(self, **kwargs):
            calls.append(("delete_objects", sorted(o["Key"] for o in kwargs["Delete"]["Objects"])))
            return client.delete_objects(**kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage, "_s3_client", lambda: Recording())
        storage.remove_dir(s3_bucket.uri("ckpt/step-1"))
    assert calls[0] == ("delete_object", [f"ckpt/step-1/{MANIFEST_NAME}"])
    deleted = [key for _, keys in calls[1:] for key in keys]
    assert sorted(deleted) == sorted(f"ckpt/step-1/{name}" for name in make_tree(tmp_path / "again"))
    remaining = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="ckpt/")["Contents"]
    # step-10 shares the name prefix "step-1" and is untouched.
    assert {item["Key"].split("/")[1] for item in remaining} == {"step-10"}
    assert storage.list_dirs(s3_bucket.uri("ckpt")) == ["step-10"]
    storage.require_complete(s3_bucket.uri("ckpt/step-10"))


# --- download_dir: a complete copy at a fixed path ------------------------------------------


def test_s3_download_dir_is_byte_identical_and_done_once(s3_bucket, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    uri = s3_bucket.uri("repos/r1")
    manifest = storage.publish_dir(tmp_path / "src", uri, producer="test", metadata={"k": "v"})
    target = tmp_path / "pod" / "models"
    assert storage.download_dir(uri, target) == manifest
    assert sorted(path.relative_to(target).as_posix() for path in target.rglob("*") if path.is_file()) == (
        sorted([*files, MANIFEST_NAME])
    )
    for name, content in files.items():
        assert (target / name).read_bytes() == content
    assert storage.require_complete(str(target)).digest == manifest.digest
    # Run again (an init container restarted after it finished): nothing is downloaded.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage, "download_file", lambda *a, **k: pytest.fail("downloaded again"))
        assert storage.download_dir(uri, target) == manifest


def test_s3_download_dir_refuses_a_repository_without_manifest(s3_bucket, tmp_path: Path) -> None:
    storage.write_text(s3_bucket.uri("half/a.txt"), "a")
    target = tmp_path / "models"
    with pytest.raises(IncompleteDirectoryError, match=rf"half has no {MANIFEST_NAME}"):
        storage.download_dir(s3_bucket.uri("half"), target)
    assert not target.exists()


def test_s3_download_dir_refuses_a_tampered_object_and_a_rerun_starts_over(s3_bucket, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    uri = s3_bucket.uri("tampered")
    storage.publish_dir(tmp_path / "src", uri, producer="test")
    s3_bucket.client.put_object(
        Bucket=s3_bucket.name, Key="tampered/weights.bin", Body=bytes(reversed(files["weights.bin"]))
    )
    target = tmp_path / "models"
    with pytest.raises(IncompleteDirectoryError, match=r"weights\.bin does not match its sha256"):
        storage.download_dir(uri, target)
    # The interrupted copy is marked as such and never looks complete...
    assert (target / storage.DOWNLOAD_MARKER).exists() and not (target / MANIFEST_NAME).exists()
    # ...so once the object is fixed, a rerun clears it and copies everything again.
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="tampered/weights.bin", Body=files["weights.bin"])
    storage.download_dir(uri, target)
    assert (target / "weights.bin").read_bytes() == files["weights.bin"]
    assert not (target / storage.DOWNLOAD_MARKER).exists()
    storage.require_complete(str(target))


def test_download_dir_never_overwrites_a_directory_it_did_not_fill(s3_bucket, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    uri = s3_bucket.uri("r2")
    storage.publish_dir(tmp_path / "src", uri, producer="test")
    target = tmp_path / "somebody-elses"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        storage.download_dir(uri, target)
    assert [path.name for path in target.iterdir()] == ["precious.txt"]

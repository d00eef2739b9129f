"""Bring your own model: plain HF checkpoints (local, s3://), Hub ids, and `llmft model import`.

The Hub is a loopback server (hub_server.py) answering the file API snapshot_download uses, reached
through HF_ENDPOINT; S3 is the moto server of conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import sys
from pathlib import Path

import pytest

from components import storage
from components.model_source import (
    CheckpointFiles,
    ModelNotFoundError,
    ModelSourceError,
    check_checkpoint,
    hub_ignore_patterns,
    parse_hub_uri,
    resolve_model,
)
from tests.components.hub_server import commit_sha
from tests.conftest import LOOPBACK, _start, _stop, _wait_until_up, free_port

HUB_SERVER = Path(__file__).with_name("hub_server.py")
HUB_TOKEN = "hf_test_secret_value_0123456789"


def plain_copy(model_dir: str | Path, destination: Path) -> Path:
    """A copy of an llmft model directory as `huggingface-cli download` would leave it: no manifest."""
    shutil.copytree(model_dir, destination)
    (destination / storage.MANIFEST_NAME).unlink()
    return destination


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own model cache, and no Hub login or token of this machine."""
    cache = tmp_path / "model-cache"
    monkeypatch.setenv("LLMFT_MODEL_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    return cache


@pytest.fixture
def plain_model(tiny_base_model: str, tmp_path: Path) -> Path:
    return plain_copy(tiny_base_model, tmp_path / "plain")


@pytest.fixture(scope="module")
def sharded_model(tiny_base_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved in several safetensors shards with model.safetensors.index.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = tmp_path_factory.mktemp("sharded") / "model"
    AutoModelForCausalLM.from_pretrained(tiny_base_model).save_pretrained(output, max_shard_size="100KB")
    AutoTokenizer.from_pretrained(tiny_base_model).save_pretrained(output)
    return output


# --- local directories ------------------------------------------------------------------------------


def test_plain_directory_is_accepted_with_the_manifest_formula_digest(tiny_base_model, plain_model) -> None:
    source = resolve_model(str(plain_model))
    assert source.local_dir == plain_model
    assert source.revision is None
    # The same files with and without a manifest: the same digest.
    assert source.digest == storage.read_manifest(tiny_base_model).digest
    assert source.lineage() == {"base_model": str(plain_model), "base_model_digest": source.digest}


def test_plain_directory_digest_is_cached_and_follows_changes(
    plain_model, isolated_caches, monkeypatch
) -> None:
    first = resolve_model(str(plain_model)).digest
    assert list((isolated_caches / "model-digests").glob("*.json"))

    hashed = []
    original = storage.sha256_file
    monkeypatch.setattr(storage, "sha256_file", lambda path: hashed.append(Path(path).name) or original(path))
    assert resolve_model(str(plain_model)).digest == first
    assert hashed == []  # nothing hashed again

    config = json.loads((plain_model / "config.json").read_text())
    config["note"] = "edited"
    (plain_model / "config.json").write_text(json.dumps(config))
    assert resolve_model(str(plain_model)).digest != first
    assert hashed == ["config.json"]


def test_tool_metadata_is_not_part_of_the_model(plain_model, tiny_base_model) -> None:
    # huggingface-cli download --local-dir leaves .cache/huggingface/ beside the files.
    (plain_model / ".cache" / "huggingface").mkdir(parents=True)
    (plain_model / ".cache" / "huggingface" / "config.json.metadata").write_text("etag")
    (plain_model / ".gitattributes").write_text("*.safetensors filter=lfs")
    assert resolve_model(str(plain_model)).digest == storage.read_manifest(tiny_base_model).digest


def test_sharded_checkpoint_is_accepted(sharded_model: Path) -> None:
    shards = sorted(path.name for path in sharded_model.glob("model-*.safetensors"))
    assert len(shards) > 1
    index = json.loads((sharded_model / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    assert resolve_model(str(sharded_model)).local_dir == sharded_model


def test_missing_shard_is_named(sharded_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "partial"
    shutil.copytree(sharded_model, model)
    missing = sorted(model.glob("model-*.safetensors"))[-1]
    missing.unlink()
    with pytest.raises(
        ModelSourceError, match=rf"shard {missing.name} named by model\.safetensors\.index\.json"
    ):
        resolve_model(str(model))


def test_numbered_shard_without_index_is_named(sharded_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "no-index"
    shutil.copytree(sharded_model, model)
    (model / "model.safetensors.index.json").unlink()
    first = sorted(model.glob("model-*.safetensors"))[0]
    first.unlink()
    with pytest.raises(ModelSourceError, match=rf"shard {first.name} is missing"):
        resolve_model(str(model))


def test_truncated_shard_is_named(sharded_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "truncated"
    shutil.copytree(sharded_model, model)
    shard = sorted(model.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    (header_length,) = struct.unpack("<Q", data[:8])
    shard.write_bytes(data[:-100])
    expected = len(data)
    with pytest.raises(
        ModelSourceError,
        match=rf"{shard.name} is truncated: {expected - 100} bytes, its header says {expected}",
    ):
        resolve_model(str(model))
    shard.write_bytes(data[: 8 + header_length // 2])  # cut inside the header
    with pytest.raises(ModelSourceError, match=rf"{shard.name} is truncated or not a safetensors file"):
        resolve_model(str(model))


def test_curated_dataset_is_not_a_checkpoint(tmp_path: Path) -> None:
    data = tmp_path / "curated"
    data.mkdir()
    (data / "train.jsonl").write_text('{"id": "1", "prompt": "p", "response": "r"}\n')
    (data / "val.jsonl").write_text('{"id": "2", "prompt": "p", "response": "r"}\n')
    storage.publish_dir(data, str(data), producer="llmft.curate")
    with pytest.raises(ModelSourceError) as caught:
        resolve_model(str(data))
    assert str(caught.value) == f"not a Hugging Face checkpoint: no config.json in {data}"


def test_checkpoint_without_tokenizer_is_refused(plain_model: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (plain_model / name).unlink(missing_ok=True)
    with pytest.raises(ModelSourceError, match=rf"{plain_model} has no tokenizer: expected tokenizer\.json"):
        resolve_model(str(plain_model))


def test_checkpoint_without_weights_is_refused(plain_model: Path) -> None:
    (plain_model / "model.safetensors").unlink()
    with pytest.raises(ModelSourceError, match="has no weights file"):
        resolve_model(str(plain_model))


def test_missing_directory_and_llmft_directory_with_a_lost_file(tiny_base_model, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere"))
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_base_model, damaged)
    (damaged / "config.json").unlink()
    with pytest.raises(storage.IncompleteDirectoryError, match=r"config\.json is missing"):
        resolve_model(str(damaged))


def test_checkpoint_check_reads_only_headers() -> None:
    """The check needs sizes and the first bytes of each file: what an S3 listing and ranged GETs give."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    weights = struct.pack("<Q", len(header)) + header + b"\0" * 8
    contents = {"config.json": b"{}", "model.safetensors": weights, "tokenizer.json": b"{}"}
    reads = []

    def read_head(name: str, n_bytes: int) -> bytes:
        reads.append((name, n_bytes))
        return contents[name][:n_bytes]

    files = {name: len(data) for name, data in contents.items()}
    check_checkpoint(CheckpointFiles(uri="mem://m", sizes=files, read_head=read_head))
    assert all(name == "model.safetensors" for name, _ in reads)
    with pytest.raises(ModelSourceError, match=r"model\.safetensors is longer than its header says"):
        check_checkpoint(
            CheckpointFiles(
                uri="mem://m", sizes={**files, "model.safetensors": len(weights) + 1}, read_head=read_head
            )
        )


# --- S3 -----------------------------------------------------------------------------------------------


def upload_tree(bucket, local: Path, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            bucket.client.upload_file(
                str(path), bucket.name, f"{prefix}/{path.relative_to(local).as_posix()}"
            )


def test_s3_plain_directory_is_downloaded_once(
    s3_bucket, plain_model, tiny_base_model, isolated_caches
) -> None:
    upload_tree(s3_bucket, plain_model, "models/plain")
    uri = s3_bucket.uri("models/plain")
    source = resolve_model(uri)
    assert source.digest == storage.read_manifest(tiny_base_model).digest
    assert source.local_dir.is_relative_to(isolated_caches)
    assert (source.local_dir / "model.safetensors").read_bytes() == (
        plain_model / "model.safetensors"
    ).read_bytes()
    again = resolve_model(uri)
    assert again.local_dir == source.local_dir and again.digest == source.digest


def test_s3_partial_checkpoint_is_refused_before_download(s3_bucket, sharded_model, isolated_caches) -> None:
    shards = sorted(path.name for path in sharded_model.glob("model-*.safetensors"))
    upload_tree(s3_bucket, sharded_model, "models/sharded")
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=f"models/sharded/{shards[1]}")
    with pytest.raises(ModelSourceError, match=rf"shard {shards[1]} named by"):
        resolve_model(s3_bucket.uri("models/sharded"))
    upload_tree(s3_bucket, sharded_model, "models/short")
    data = (sharded_model / shards[0]).read_bytes()
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"models/short/{shards[0]}", Body=data[:-1])
    with pytest.raises(ModelSourceError, match=rf"models/short/{shards[0]} is truncated"):
        resolve_model(s3_bucket.uri("models/short"))
    assert not (isolated_caches / "models").exists() or not any((isolated_caches / "models").iterdir())


def test_s3_dataset_and_missing_prefix(s3_bucket) -> None:
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="data/train.jsonl", Body=b"{}\n")
    with pytest.raises(
        ModelSourceError,
        match=rf"^not a Hugging Face checkpoint: no config.json in s3://{s3_bucket.name}/data$",
    ):
        resolve_model(s3_bucket.uri("data"))
    with pytest.raises(ModelNotFoundError, match="no objects under"):
        resolve_model(s3_bucket.uri("nothing/here"))


def test_s3_key_leaving_the_destination_is_refused(s3_bucket, plain_model, isolated_caches) -> None:
    upload_tree(s3_bucket, plain_model, "models/escape")
    s3_bucket.client.put_object(
        Bucket=s3_bucket.name, Key="models/escape/sub/../../../outside.txt", Body=b"x"
    )
    with pytest.raises(ModelSourceError, match=r"refusing 'sub/\.\./\.\./\.\./outside\.txt'"):
        resolve_model(s3_bucket.uri("models/escape"))
    assert not list(isolated_caches.rglob("outside.txt"))


def test_safe_relative_path() -> None:
    assert storage.safe_relative_path("a/b.json") == Path("a/b.json")
    for name in ("/etc/passwd", "../x", "a/../../x", "", "a//b", "C:\\x"):
        with pytest.raises(ValueError, match="refusing"):
            storage.safe_relative_path(name)


# --- the Hub ----------------------------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path: Path, plain_model: Path, monkeypatch: pytest.MonkeyPatch):
    """A loopback Hub with acme/tiny (public, with a pickled copy of the weights no step needs)
    and acme/gated (needs HF_TOKEN); HF_ENDPOINT points at it."""
    root = tmp_path / "hub"
    shutil.copytree(plain_model, root / "acme" / "tiny")
    (root / "acme" / "tiny" / "pytorch_model.bin").write_bytes(b"pickled weights no step loads")
    shutil.copytree(plain_model, root / "acme" / "gated")
    (root / "acme" / "gated" / ".gated").write_text("")
    port = free_port()
    log_path = tmp_path / "hub-requests.log"
    log_path.write_text("")
    command = [
        sys.executable,
        str(HUB_SERVER),
        "--root",
        str(root),
        "--port",
        str(port),
        "--log",
        str(log_path),
    ]
    process = _start([*command, "--token", HUB_TOKEN], tmp_path / "hub-server.log")
    endpoint = f"http://{LOOPBACK}:{port}"
    try:
        _wait_until_up(process, f"{endpoint}/healthz", timeout_s=30, log_path=tmp_path / "hub-server.log")
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        yield {"root": root, "requests": log_path}
    finally:
        _stop(process)


def requests_made(hub) -> list[str]:
    return [line for line in hub["requests"].read_text().splitlines() if "/healthz" not in line]


def test_hub_id_is_downloaded_checked_and_pinned_to_its_commit(hub, tiny_base_model, isolated_caches) -> None:
    sha = commit_sha(hub["root"] / "acme" / "tiny")
    source = resolve_model("hf://acme/tiny")
    assert source.revision == sha and source.digest == sha
    assert source.local_dir.name == sha and source.local_dir.is_relative_to(isolated_caches)
    assert source.lineage() == {
        "base_model": "hf://acme/tiny",
        "base_model_digest": sha,
        "base_model_revision": sha,
    }
    downloaded = {path.name for path in source.local_dir.iterdir()}
    assert "model.safetensors" in downloaded and "pytorch_model.bin" not in downloaded
    assert requests_made(hub)

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(source.local_dir).config.num_hidden_layers == 2


def test_hub_cache_is_reused_without_a_request(hub) -> None:
    first = resolve_model("hf://acme/tiny")
    before = requests_made(hub)
    for uri in ("hf://acme/tiny", f"hf://acme/tiny@{first.revision}"):
        again = resolve_model(uri)
        assert again.local_dir == first.local_dir and again.revision == first.revision
    assert requests_made(hub) == before


def test_hub_errors(hub) -> None:
    with pytest.raises(ModelNotFoundError, match="no such Hub repository"):
        resolve_model("hf://acme/missing")
    with pytest.raises(ModelNotFoundError, match="has no revision 'v9'"):
        resolve_model("hf://acme/tiny@v9")
    with pytest.raises(ModelSourceError, match=r"is gated: .*HF_TOKEN \(HF_TOKEN is not set\)"):
        resolve_model("hf://acme/gated")


def test_unreachable_hub_is_a_clear_error(monkeypatch) -> None:
    endpoint = f"http://{LOOPBACK}:{free_port()}"  # nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(ModelSourceError, match=rf"cannot reach the Hub at {endpoint} for hf://acme/tiny"):
        resolve_model("hf://acme/tiny")


def test_hub_token_comes_from_hf_token_and_is_never_shown(hub, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    assert resolve_model("hf://acme/gated").revision == commit_sha(hub["root"] / "acme" / "gated")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_value")
    with pytest.raises(ModelSourceError) as caught:
        resolve_model("hf://acme/gated@" + "0" * 40)
    assert "hf_wrong_token_value" not in str(caught.value)
    assert "HF_TOKEN is set" in str(caught.value)


def test_a_dry_run_plan_reads_only_config_json_from_the_hub(hub) -> None:
    from components.train.plan import TrainError, read_base_model_config

    config = read_base_model_config("hf://acme/tiny")
    assert config["num_hidden_layers"] == 2
    downloaded = [line for line in requests_made(hub) if line.startswith("GET /acme/")]
    assert downloaded and all(line.endswith("/config.json") for line in downloaded)
    with pytest.raises(TrainError, match="no such Hub repository"):
        read_base_model_config("hf://acme/missing")


def test_hub_id_parsing() -> None:
    assert parse_hub_uri("hf://acme/tiny") == ("acme/tiny", "main")
    assert parse_hub_uri("hf://acme/tiny@v1.0") == ("acme/tiny", "v1.0")
    assert parse_hub_uri("hf://gpt2") == ("gpt2", "main")
    for bad in ("hf://", "hf://a/b/c", "hf://acme/tiny@", "hf://acme/ti ny"):
        with pytest.raises(ModelSourceError, match="not a Hub model id"):
            parse_hub_uri(bad)


def test_hub_ignore_patterns_skip_pickles_only_beside_safetensors() -> None:
    assert "pytorch_model*.bin" in hub_ignore_patterns(["model.safetensors", "pytorch_model.bin"])
    assert "pytorch_model*.bin" not in hub_ignore_patterns(["pytorch_model.bin", "config.json"])
    assert "original/*" in hub_ignore_patterns([])


# --- llmft model import --------------------------------------------------------------------------------


def test_model_import_round_trip(plain_model, tmp_path, capsys) -> None:
    from pipelines.cli import main

    destination = tmp_path / "imported"
    assert main(["model", "import", str(plain_model), str(destination)]) == 0
    printed = capsys.readouterr().out
    manifest = storage.require_complete(str(destination))
    assert f"digest: {manifest.digest}" in printed
    # The copy has the plain directory's digest, and loads as a model.
    assert manifest.digest == resolve_model(str(plain_model)).digest
    assert manifest.metadata["source"] == str(plain_model)
    imported = resolve_model(str(destination))
    assert imported.digest == manifest.digest
    # Importing again is a no-op; another model, or a place holding other files, is refused.
    assert main(["model", "import", str(plain_model), str(destination)]) == 0
    assert storage.read_manifest(str(destination)).created_at == manifest.created_at
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["model", "import", str(plain_model), str(tmp_path / "taken")]) == 1
    assert "is not empty and holds no earlier import" in capsys.readouterr().err

    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoTokenizer.from_pretrained(imported.local_dir).eos_token == "</s>"
    assert AutoModelForCausalLM.from_pretrained(imported.local_dir).config.num_hidden_layers == 2


def test_model_import_from_the_hub_to_s3(hub, s3_bucket, capsys) -> None:
    from pipelines.cli import main

    destination = s3_bucket.uri("models/pinned")
    assert main(["model", "import", "hf://acme/tiny", destination]) == 0
    manifest = storage.require_complete(destination)
    sha = commit_sha(hub["root"] / "acme" / "tiny")
    assert manifest.metadata["source_revision"] == sha
    assert "pytorch_model.bin" not in {entry.path for entry in manifest.files}
    assert f"commit {sha}" in capsys.readouterr().out
    assert resolve_model(destination).digest == manifest.digest


def test_model_import_refuses_a_dataset_with_a_clear_error(tmp_path, capsys) -> None:
    from pipelines.cli import main

    data = tmp_path / "curated"
    data.mkdir()
    (data / "train.jsonl").write_text("{}\n")
    assert main(["model", "import", str(data), str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert f"not a Hugging Face checkpoint: no config.json in {data}" in error
    assert "Traceback" not in error
    assert not (tmp_path / "out").exists()


# --- the steps ----------------------------------------------------------------------------------------


def test_llmft_train_takes_a_plain_checkpoint(plain_model, tmp_path, capsys) -> None:
    from pipelines.cli import main
    from tests.components.test_train import make_records, write_dataset

    data = write_dataset(tmp_path / "curated", make_records(16, 1), make_records(4, 2))
    output = tmp_path / "train"
    argv = ["train", "--base-model", str(plain_model), "--data", data, "--output", str(output)]
    argv += ["--max-steps", "1", "--device", "cpu", "--micro-batch-size", "4", "--global-batch-size", "4"]
    assert main([*argv, "--max-length", "128"]) == 0
    adapter = storage.require_complete(str(output / "adapter"))
    assert adapter.metadata["base_model"] == str(plain_model)
    assert adapter.metadata["base_model_digest"] == resolve_model(str(plain_model)).digest

    # evaluate knows the base model by content: an imported copy elsewhere is the same model ...
    from components.evaluate.evaluate import EvaluateError, check_adapter_identity
    from pipelines.model_import import import_model

    copy = import_model(str(plain_model), str(tmp_path / "copy")).destination
    check_adapter_identity(output / "adapter", str(output / "adapter"), resolve_model(copy))
    # ... and a model with other files is another one, whatever it is called.
    config = json.loads((plain_model / "config.json").read_text())
    (plain_model / "config.json").write_text(json.dumps({**config, "note": "changed"}))
    with pytest.raises(EvaluateError, match="whose content differs"):
        check_adapter_identity(output / "adapter", str(output / "adapter"), resolve_model(str(plain_model)))


def test_llmft_train_refuses_a_dataset_as_base_model(tmp_path, capsys) -> None:
    from pipelines.cli import main
    from tests.components.test_train import make_records, write_dataset

    data = write_dataset(tmp_path / "curated", make_records(4, 1), make_records(2, 2))
    argv = [
        "train",
        "--base-model",
        data,
        "--data",
        data,
        "--output",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    ]
    assert main(argv) == 1
    assert f"not a Hugging Face checkpoint: no config.json in {data}" in capsys.readouterr().err


def test_digest_formula_matches_the_manifest(plain_model) -> None:
    entries = sorted(
        (path.relative_to(plain_model).as_posix(), hashlib.sha256(path.read_bytes()).hexdigest())
        for path in plain_model.rglob("*")
        if path.is_file()
    )
    expected = hashlib.sha256("\n".join(f"{name}:{sha}" for name, sha in entries).encode()).hexdigest()
    assert resolve_model(str(plain_model)).digest == expected

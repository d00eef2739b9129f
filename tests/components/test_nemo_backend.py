"""The nemo backend by contract: the recipe it writes, the data and template it feeds AutoModel,
and how it collects AutoModel's adapter. AutoModel itself needs CUDA (run on the GPU machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components import storage
from components.records import Record, write_records
from components.train import nemo_backend
from components.train.data import IGNORE_INDEX, encode_record
from components.train.train import LoraSettings, TrainConfig

RECORDS = [
    Record(id="a", prompt="Classify the sentiment of this review: the soup was superb.", response="positive"),
    Record(
        id="b", prompt="Name the topic of this text: the band played.", response="music", system="Be brief."
    ),
]


@pytest.fixture(scope="module")
def tokenizer(tiny_base_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base_model)


def _messages(record: Record) -> list[dict[str, str]]:
    system = [{"role": "system", "content": record.system}] if record.system else []
    return [
        *system,
        {"role": "user", "content": record.prompt},
        {"role": "assistant", "content": record.response},
    ]


@pytest.mark.parametrize("record", RECORDS, ids=["no-system", "system"])
def test_chat_template_gives_the_hf_backend_tokens_and_loss_mask(tokenizer, record):
    rendered = tokenizer.apply_chat_template(
        _messages(record),
        chat_template=nemo_backend.CHAT_TEMPLATE,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    expected = encode_record(tokenizer, record, max_length=512)
    assert rendered["input_ids"] == expected.input_ids
    trained = [bool(flag) for flag in rendered["assistant_masks"]]
    assert trained == [label != IGNORE_INDEX for label in expected.labels]


def test_chat_dataset_lines(tmp_path):
    write_records(tmp_path / "train.jsonl", RECORDS)
    count = nemo_backend.write_chat_dataset(tmp_path / "train.jsonl", tmp_path / "messages.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "messages.jsonl").read_text().splitlines()]
    assert count == 2
    assert lines[0] == {"messages": _messages(RECORDS[0])}
    assert lines[1]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_recipe_maps_our_settings(tmp_path):
    config = TrainConfig(
        base_model="m",
        data="d",
        output="o",
        backend="nemo",
        lora=LoraSettings(r=8, alpha=16, dropout=0.1, target_modules=["q_proj", "v_proj"]),
        learning_rate=1e-4,
        micro_batch_size=2,
        global_batch_size=32,
        max_length=256,
        save_every_steps=50,
        seed=7,
        precision="auto",
        gradient_checkpointing=True,
    )
    recipe = nemo_backend.recipe_config(
        config,
        tmp_path / "model",
        tmp_path / "data.jsonl",
        tmp_path / "t.jinja",
        tmp_path / "ckpt",
        total_steps=120,
        world_size=8,
    )
    assert recipe["peft"]["target_modules"] == [
        "*.q_proj",
        "*.v_proj",
    ]  # bare names match nothing in AutoModel
    assert (recipe["peft"]["dim"], recipe["peft"]["alpha"], recipe["peft"]["dropout"]) == (8, 16, 0.1)
    assert recipe["peft"]["dropout_position"] == "pre"
    assert recipe["step_scheduler"] == {
        "local_batch_size": 2,
        "global_batch_size": 32,
        "max_steps": 120,
        "num_epochs": 1_000_000,
        "ckpt_every_steps": 50,
        "val_every_steps": None,
    }
    assert recipe["optimizer"]["lr"] == 1e-4 and recipe["seed"] == 7
    assert recipe["model"]["torch_dtype"] == "bfloat16"
    assert recipe["model"]["pretrained_model_name_or_path"] == str(tmp_path / "model")
    assert recipe["dataset"]["seq_length"] == 256
    assert recipe["distributed"]["activation_checkpointing"] is True
    assert recipe["checkpoint"]["checkpoint_dir"] == str(tmp_path / "ckpt")
    assert yaml.safe_load(yaml.safe_dump(recipe)) == recipe


def test_recipe_command_uses_the_nemo_environment_and_torchrun_for_several_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv(nemo_backend.NEMO_PYTHON_ENV, "/opt/nemo/bin/python")
    single = nemo_backend.recipe_command(tmp_path / "r.yaml", 1)
    assert single == [
        "/opt/nemo/bin/python",
        "-m",
        nemo_backend.RECIPE_MODULE,
        "-c",
        str(tmp_path / "r.yaml"),
    ]
    several = nemo_backend.recipe_command(tmp_path / "r.yaml", 4)
    assert several[:5] == [
        "/opt/nemo/bin/python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
    ]
    assert several[5:] == single[1:]


def test_refuses_to_start_where_automodel_cannot_run():
    with pytest.raises(nemo_backend.NemoBackendError, match="nemo"):
        nemo_backend.require_nemo_automodel()


def _fake_automodel_checkpoint(root: Path, step: int) -> Path:
    """The layout AutoModel 0.7 writes for a LoRA run (files only, tiny contents)."""
    model_dir = root / f"epoch_0_step_{step}" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "base_model_name_or_path": "/elsewhere"})
    )
    (model_dir / "adapter_model.safetensors").write_bytes(b"weights")
    return model_dir


def test_collects_and_publishes_the_newest_adapter(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    _fake_automodel_checkpoint(checkpoints, 4)
    newest = _fake_automodel_checkpoint(checkpoints, 9)
    (checkpoints / "training.jsonl").write_text(
        "\n".join(json.dumps({"step": step, "loss": 3.0 - step / 10}) for step in range(10))
    )
    assert nemo_backend.latest_adapter_dir(checkpoints) == newest
    curve, _, _ = nemo_backend.read_losses(checkpoints)
    assert curve[0] == (1, 3.0) and len(curve) == 10
    lineage = {"base_model": "s3://bucket/base", "base_model_digest": "d" * 64}
    nemo_backend.publish_adapter(
        newest, "s3://bucket/base", str(tmp_path / "adapter"), steps=10, lineage=lineage
    )
    manifest = storage.require_complete(str(tmp_path / "adapter"))
    assert manifest.metadata["backend"] == "nemo"
    # The base model's digest travels with the adapter, as the hf backend's does.
    assert manifest.metadata["base_model_digest"] == "d" * 64
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ] == ("s3://bucket/base")


def test_missing_adapter_is_a_clear_error(tmp_path):
    (tmp_path / "epoch_0_step_1" / "model").mkdir(parents=True)
    with pytest.raises(nemo_backend.NemoBackendError, match="wrote no adapter"):
        nemo_backend.latest_adapter_dir(tmp_path)

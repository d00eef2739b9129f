"""components/export: merge a LoRA adapter into the tiny base model, publish the checkpoint,
and register it in a real MLflow server (S3 outputs on a moto server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from components import storage
from components.export.export import ExportConfig, ExportError, export
from components.prompt import render_prompt
from components.storage import MANIFEST_NAME, IncompleteDirectoryError
from components.tracking import run_step


def make_adapter(base_model: str, output: Path, target_modules: list[str], seed: int = 0) -> str:
    """A PEFT adapter with non-zero lora_B (as after training), saved like train saves one."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_model)
    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=target_modules, task_type="CAUSAL_LM"
    )
    model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
    model.save_pretrained(output)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(output)
    storage.publish_dir(output, str(output), producer="llmft.train", metadata={"base_model": base_model})
    return str(output)


@pytest.fixture(scope="module")
def adapter(tiny_base_model, tmp_path_factory) -> str:
    output = tmp_path_factory.mktemp("adapter") / "adapter"
    return make_adapter(tiny_base_model, output, ["q_proj", "v_proj", "down_proj"])


@pytest.fixture(scope="module")
def exported(tiny_base_model, adapter, tmp_path_factory):
    output = tmp_path_factory.mktemp("export") / "merged"
    config = ExportConfig(base_model=tiny_base_model, adapter=adapter, output=str(output))
    return export(config), output


def sample_ids(tokenizer) -> torch.Tensor:
    text = render_prompt("Classify the sentiment of this review: the soup was great.")
    return torch.tensor([[tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]])


def test_merged_checkpoint_is_complete(exported, tiny_base_model, adapter) -> None:
    result, output = exported
    assert result.checkpoint == str(output)
    manifest = storage.require_complete(str(output))
    assert manifest.digest == result.manifest_digest
    assert manifest.producer == "llmft.export"
    assert manifest.metadata["base_model"] == tiny_base_model and manifest.metadata["adapter"] == adapter
    names = {entry.path for entry in manifest.files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "adapter_config.json" not in names and "adapter_model.safetensors" not in names
    weights = load_file(output / "model.safetensors")
    assert not [name for name in weights if "lora" in name]  # merged, not an adapter beside the base
    base = AutoModelForCausalLM.from_pretrained(tiny_base_model)
    assert result.parameters == sum(p.numel() for p in base.parameters())
    assert {name: t.shape for name, t in weights.items()} == {
        name: t.shape for name, t in load_file(Path(tiny_base_model) / "model.safetensors").items()
    }
    assert result.model_version is None and "not registered" in result.summary()


def test_merged_model_computes_what_base_plus_adapter_computes(exported, tiny_base_model, adapter) -> None:
    _, output = exported
    tokenizer = AutoTokenizer.from_pretrained(output)
    ids = sample_ids(tokenizer)
    assert ids.tolist() == sample_ids(AutoTokenizer.from_pretrained(tiny_base_model)).tolist()
    merged = AutoModelForCausalLM.from_pretrained(output).eval()
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_base_model), adapter
    ).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_base_model).eval()
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
        reference_logits = reference(input_ids=ids).logits
        base_logits = base(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, reference_logits, atol=1e-5, rtol=0)
    assert (merged_logits - base_logits).abs().max() > 1e-3  # the adapter is in the weights


def test_export_to_s3_is_registered_in_mlflow(tiny_base_model, adapter, s3_bucket, mlflow_server) -> None:
    output = s3_bucket.uri("runs/r1/export")
    lineage = {"dataset_sha256": "abc123", "pipeline_run": "r1", "train_mlflow_run_id": ""}
    name = f"llmft-test-{s3_bucket.name}"
    config = ExportConfig(
        base_model=tiny_base_model,
        adapter=adapter,
        output=output,
        registered_model_name=name,
        lineage=lineage,
    )
    result, run_id = run_step("export", export, config, mlflow_server, experiment="test-export")
    assert result.model_version == "1" and result.checkpoint == output
    assert f"{name} v1" in result.summary()
    manifest = storage.require_complete(output)
    assert manifest.digest == result.manifest_digest
    assert "model.safetensors" in {entry.path for entry in manifest.files}

    client = MlflowClient(mlflow_server)
    version = client.get_model_version(name, "1")
    assert version.source == output
    assert version.run_id == run_id
    assert version.tags == {
        **lineage,
        "base_model": tiny_base_model,
        "base_model_digest": storage.read_manifest(tiny_base_model).digest,
        "adapter": adapter,
        "checkpoint_sha256": result.manifest_digest,
    }
    assert client.get_run(run_id).data.params["registered_model_name"] == name
    # Exporting again makes version 2 of the same registered model.
    again, _ = run_step(
        "export", export, config.model_copy(update={"output": s3_bucket.uri("runs/r2/export")}), mlflow_server
    )
    assert again.model_version == "2"
    assert again.manifest_digest == result.manifest_digest  # same inputs, same bytes
    assert [m.name for m in client.search_registered_models(f"name = '{name}'")] == [name]
    # What lies on S3 loads as an ordinary Hugging Face checkpoint.
    AutoModelForCausalLM.from_pretrained(storage.localize_dir(output))


def test_local_output_with_a_tracking_server_is_exported_but_not_registered(
    tiny_base_model, adapter, mlflow_server, tmp_path
) -> None:
    config = ExportConfig(base_model=tiny_base_model, adapter=adapter, output=str(tmp_path / "merged"))
    result, run_id = run_step("export", export, config, mlflow_server, experiment="test-export-local")
    assert result.model_version is None
    storage.require_complete(str(tmp_path / "merged"))
    assert MlflowClient(mlflow_server).get_run(run_id).info.status == "FINISHED"


def test_fp16_export(tiny_base_model, adapter, tmp_path) -> None:
    config = ExportConfig(
        base_model=tiny_base_model, adapter=adapter, output=str(tmp_path / "m"), dtype="fp16"
    )
    export(config)
    weights = load_file(tmp_path / "m" / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float16}


def test_adapter_without_adapter_config_is_refused(tiny_base_model, adapter, tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(
        (Path(adapter) / "adapter_model.safetensors").read_bytes()
    )
    storage.publish_dir(broken, str(broken), producer="llmft.train")
    config = ExportConfig(base_model=tiny_base_model, adapter=str(broken), output=str(tmp_path / "out"))
    with pytest.raises(ExportError, match=r"has no adapter_config\.json: not a PEFT adapter directory"):
        export(config)
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_adapter_for_other_layers_is_refused(tiny_base_model, adapter, tmp_path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for path in Path(adapter).iterdir():
        if path.name != MANIFEST_NAME:
            (other / path.name).write_bytes(path.read_bytes())
    settings = json.loads((other / "adapter_config.json").read_text())
    settings["target_modules"] = ["c_attn"]  # a GPT-2 layer name, not one of Llama's
    (other / "adapter_config.json").write_text(json.dumps(settings))
    storage.publish_dir(other, str(other), producer="llmft.train")
    config = ExportConfig(base_model=tiny_base_model, adapter=str(other), output=str(tmp_path / "out"))
    with pytest.raises(ExportError, match="does not fit base model"):
        export(config)


def test_adapter_without_manifest_is_refused(tiny_base_model, adapter, tmp_path) -> None:
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "adapter_config.json").write_bytes((Path(adapter) / "adapter_config.json").read_bytes())
    config = ExportConfig(base_model=tiny_base_model, adapter=str(unfinished), output=str(tmp_path / "out"))
    with pytest.raises(IncompleteDirectoryError):
        export(config)


def test_failed_re_export_leaves_the_earlier_export_intact(
    tiny_base_model, adapter, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "merged"
    config = ExportConfig(base_model=tiny_base_model, adapter=adapter, output=str(output))
    first = export(config)

    def crash(self, *args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", crash)
    with pytest.raises(OSError, match="no space left"):
        export(config)
    # The new export failed while staging, so nothing at the output changed.
    assert storage.require_complete(str(output)).digest == first.manifest_digest

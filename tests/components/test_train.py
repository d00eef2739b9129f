"""components/train: encoding with the response-only loss mask, batching, and LoRA training
on the tiny base model (CPU), locally, to S3 (moto server) and with a real MLflow server."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from components import storage
from components.prompt import render_prompt
from components.records import Record, write_records
from components.storage import MANIFEST_NAME, IncompleteDirectoryError
from components.tracking import run_step
from components.train.data import IGNORE_INDEX, EncodedExample, collate, encode_record, prompt_ids
from components.train.train import LoraSettings, TrainConfig, TrainError, train

SUBJECTS = ["the soup", "the service", "the movie", "the hotel room", "the concert", "the book"]
POSITIVE = ["wonderful", "delightful", "excellent", "friendly", "lovely", "great"]
NEGATIVE = ["terrible", "awful", "rude", "boring", "dreadful", "cold"]


def make_records(count: int, seed: int) -> list[Record]:
    """Short sentiment-classification records, the kind of task the tiny model can learn."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        label = "positive" if index % 2 == 0 else "negative"
        word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        text = f"{rng.choice(SUBJECTS)} was {word}."
        records.append(
            Record(
                id=f"r{seed}-{index}", prompt=f"Classify the sentiment of this review: {text}", response=label
            )
        )
    return records


def write_dataset(directory: Path, train_records: list[Record], val_records: list[Record]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    write_records(directory / "train.jsonl", train_records)
    write_records(directory / "val.jsonl", val_records)
    storage.publish_dir(directory, str(directory), producer="test")
    return str(directory)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return write_dataset(tmp_path_factory.mktemp("data") / "curated", make_records(40, 1), make_records(8, 2))


@pytest.fixture(scope="module")
def tokenizer(tiny_base_model):
    return AutoTokenizer.from_pretrained(tiny_base_model)


def config_for(base: str, data: str, output: str, **overrides) -> TrainConfig:
    settings = {
        "base_model": base,
        "data": data,
        "output": output,
        "max_steps": 20,
        "learning_rate": 3e-3,
        "micro_batch_size": 4,
        "global_batch_size": 8,
        "max_length": 128,
        "save_every_steps": 5,
        "keep_checkpoints": 2,
        "log_every_steps": 5,
        "device": "cpu",
        "lora": LoraSettings(r=8, alpha=16),
    }
    return TrainConfig(**{**settings, **overrides})


# --- encoding and batching ---------------------------------------------------------------


def test_encode_record_masks_exactly_the_prompt(tokenizer) -> None:
    record = Record(
        id="a", prompt="Is this review positive or negative: the soup was great.", response="positive"
    )
    encoded = encode_record(tokenizer, record, max_length=256)
    prompt = tokenizer(render_prompt(record.prompt), add_special_tokens=False)["input_ids"]
    response = tokenizer("positive", add_special_tokens=False)["input_ids"]
    head = 1 + len(prompt)  # BOS + rendered prompt
    assert encoded.input_ids == [tokenizer.bos_token_id, *prompt, *response, tokenizer.eos_token_id]
    assert encoded.labels[:head] == [IGNORE_INDEX] * head
    assert encoded.labels[head:] == encoded.input_ids[head:] == [*response, tokenizer.eos_token_id]
    assert encoded.response_tokens == len(response) + 1
    assert prompt_ids(tokenizer, record) == encoded.input_ids[:head]  # what evaluation generates from


def test_encode_record_renders_the_system_prompt(tokenizer) -> None:
    record = Record(id="s", prompt="Name the topic.", response="music", system="Answer with one word.")
    encoded = encode_record(tokenizer, record, max_length=256)
    rendered = tokenizer(render_prompt(record.prompt, record.system), add_special_tokens=False)["input_ids"]
    assert encoded.input_ids[1 : 1 + len(rendered)] == rendered
    assert tokenizer.decode(encoded.input_ids[1 : 1 + len(rendered)]).startswith("### System:\nAnswer")


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_response(tokenizer) -> None:
    record = Record(id="long", prompt="the concert was lovely " * 40, response="positive sentiment")
    response = [*tokenizer(record.response, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    full_prompt = tokenizer(render_prompt(record.prompt), add_special_tokens=False)["input_ids"]
    max_length = len(response) + 10
    encoded = encode_record(tokenizer, record, max_length)
    assert len(encoded.input_ids) == len(encoded.labels) == max_length
    assert encoded.input_ids[0] == tokenizer.bos_token_id
    # The end of the prompt (next to the answer) survives; its beginning is cut.
    kept = max_length - 1 - len(response)
    assert encoded.input_ids[1 : 1 + kept] == full_prompt[-kept:]
    assert encoded.labels[: 1 + kept] == [IGNORE_INDEX] * (1 + kept)
    assert encoded.input_ids[-len(response) :] == response
    assert encoded.labels[-len(response) :] == response
    assert encoded.response_tokens == len(response)
    # A response longer than the limit loses its end, never its start, and still carries the loss.
    short = encode_record(tokenizer, record, max_length=4)
    assert short.input_ids == [tokenizer.bos_token_id, *response[:3]]
    assert short.labels == [IGNORE_INDEX, *response[:3]]


def test_collate_pads_and_masks_padding() -> None:
    examples = [
        EncodedExample(input_ids=[1, 5, 6, 7, 2], labels=[IGNORE_INDEX, IGNORE_INDEX, 6, 7, 2]),
        EncodedExample(input_ids=[1, 8, 2], labels=[IGNORE_INDEX, 8, 2]),
    ]
    batch = collate(examples, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 7, 2], [-100, 8, 2, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


# --- training end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_base_model, dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("train") / "run"
    config = config_for(tiny_base_model, dataset, str(output))
    return config, train(config), output


def test_training_lowers_the_loss(trained) -> None:
    _, result, output = trained
    assert result.steps == 20
    assert result.epochs == pytest.approx(20 / 5)  # 40 records / (4 x 2 accumulation) = 5 steps per epoch
    assert math.isfinite(result.first_loss) and math.isfinite(result.final_loss)
    assert result.final_loss < result.first_loss * 0.7, (result.first_loss, result.final_loss)
    assert math.isfinite(result.val_loss) and result.val_loss < result.first_loss
    assert result.train_tokens > 0 and result.tokens_per_second > 0
    assert result.adapter == storage.join(str(output), "adapter")
    assert "trained 20 steps" in result.summary()


def test_adapter_is_a_complete_peft_directory(trained, tiny_base_model) -> None:
    from peft import PeftModel

    _, result, _ = trained
    adapter = Path(result.adapter)
    manifest = storage.require_complete(str(adapter))
    names = {entry.path for entry in manifest.files}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= names
    assert manifest.producer == "llmft.train"
    assert manifest.metadata["steps"] == 20 and manifest.metadata["base_model"] == tiny_base_model
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    assert set(adapter_config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    base = AutoModelForCausalLM.from_pretrained(tiny_base_model)
    model = PeftModel.from_pretrained(base, adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in weights.items() if "lora_B" in name]
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b)  # trained, not the zero init
    # The loaded adapter changes the model's output.
    ids = torch.tensor([[1, 5, 9, 12, 30]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert not torch.allclose(tuned, plain)


def test_only_the_last_checkpoints_are_kept(trained) -> None:
    _, _, output = trained
    checkpoints = output / "checkpoints"
    assert storage.list_dirs(str(checkpoints)) == ["step-00000015", "step-00000020"]
    for name in ("step-00000015", "step-00000020"):
        manifest = storage.require_complete(str(checkpoints / name))
        assert {"trainer_state.pt", "adapter_model.safetensors"} <= {entry.path for entry in manifest.files}
        state = torch.load(checkpoints / name / "trainer_state.pt", weights_only=False)
        assert state["step"] == int(name.removeprefix("step-")) == manifest.metadata["step"]
        assert {"optimizer", "scheduler", "epoch"} <= set(state)
        # What resume needs: the position in the epoch, the loss curve so far, every rank's RNG.
        assert {"position", "tokens", "loss_curve", "rng"} <= set(state)
        assert [step for step, _ in state["loss_curve"]] == list(range(1, state["step"] + 1))
        assert manifest.metadata["settings"]["seed"] == 42 and manifest.metadata["world_size"] == 1


def test_metrics_file(trained) -> None:
    _, result, output = trained
    metrics = json.loads((output / "metrics.json").read_text())
    assert [step for step, _ in metrics["loss_curve"]] == list(range(1, result.steps + 1))
    assert metrics["final_loss"] == result.final_loss and metrics["steps"] == result.steps
    assert metrics["eval_curve"] == [[result.steps, result.val_loss]]
    assert metrics["world_size"] == 1 and metrics["resumed_from"] is None


def test_gradient_accumulation_matches_one_big_batch(tiny_base_model, dataset, tmp_path) -> None:
    """One optimizer step over 8 sequences is the same whether they run as 1x8 or 4x2."""
    weights, first_losses = [], []
    for micro in (8, 2):
        output = tmp_path / f"micro-{micro}"
        config = config_for(
            tiny_base_model,
            dataset,
            str(output),
            max_steps=1,
            micro_batch_size=micro,
            global_batch_size=8,
            learning_rate=1e-3,
            warmup_ratio=0.0,
            save_every_steps=0,
            lora=LoraSettings(r=8, alpha=16, dropout=0.0),
        )
        assert train(config).steps == 1
        weights.append(load_file(output / "adapter" / "adapter_model.safetensors"))
        first_losses.append(json.loads((output / "metrics.json").read_text())["loss_curve"][0][1])
    assert first_losses[0] == pytest.approx(first_losses[1], rel=1e-5)
    assert weights[0].keys() == weights[1].keys()
    moved = 0
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name], atol=1e-5, rtol=0, msg=name)
        moved += int("lora_B" in name and tensor.abs().max() > 1e-4)
    assert moved > 0  # the step did change the adapter, so the comparison means something


# --- refused settings and inputs -------------------------------------------------------------


def test_nemo_backend_refuses_to_start_without_automodel_and_a_gpu(tmp_path) -> None:
    from components.train.nemo_backend import NemoBackendError

    config = config_for(str(tmp_path / "nowhere"), str(tmp_path / "nothing"), str(tmp_path / "out"))
    with pytest.raises(NemoBackendError, match=r"backend='nemo' needs"):
        train(config.model_copy(update={"backend": "nemo"}))
    assert not (tmp_path / "out").exists()


def test_unknown_target_module_is_named(tiny_base_model, dataset, tmp_path) -> None:
    lora = LoraSettings(target_modules=["q_proj", "c_attn"])
    with pytest.raises(TrainError, match=r"\['c_attn'\] are not layers of") as error:
        train(config_for(tiny_base_model, dataset, str(tmp_path / "out"), lora=lora))
    assert "q_proj" not in str(error.value).split("are not layers")[0]


def test_empty_training_set_is_refused(tiny_base_model, tmp_path) -> None:
    data = write_dataset(tmp_path / "empty", [], make_records(4, 3))
    with pytest.raises(TrainError, match=r"train\.jsonl holds no records"):
        train(config_for(tiny_base_model, data, str(tmp_path / "out")))


def test_data_without_manifest_is_refused(tiny_base_model, tmp_path) -> None:
    data = tmp_path / "unfinished"
    data.mkdir()
    write_records(data / "train.jsonl", make_records(8, 1))
    write_records(data / "val.jsonl", make_records(2, 2))
    with pytest.raises(IncompleteDirectoryError, match=MANIFEST_NAME):
        train(config_for(tiny_base_model, str(data), str(tmp_path / "out")))


def test_bf16_on_cpu_is_refused(tiny_base_model, dataset, tmp_path) -> None:
    with pytest.raises(TrainError, match="precision=bf16 needs a GPU"):
        train(config_for(tiny_base_model, dataset, str(tmp_path / "out"), precision="bf16"))


# --- S3 and MLflow --------------------------------------------------------------------------


def test_train_reads_and_writes_s3(tiny_base_model, dataset, s3_bucket) -> None:
    from peft import PeftModel

    data_uri = s3_bucket.uri("curated")
    storage.publish_dir(dataset, data_uri, producer="test")
    output = s3_bucket.uri("runs/r1/train")
    config = config_for(tiny_base_model, data_uri, output, max_steps=3, save_every_steps=2)
    result = train(config)
    assert result.adapter == f"{output}/adapter"
    manifest = storage.require_complete(result.adapter)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {entry.path for entry in manifest.files}
    assert storage.list_dirs(f"{output}/checkpoints") == ["step-00000002", "step-00000003"]
    metrics = json.loads(storage.read_text(f"{output}/metrics.json"))
    assert len(metrics["loss_curve"]) == 3
    # What lies on S3 is a usable adapter.
    local = storage.localize_dir(result.adapter)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_model), local)


def test_train_loss_is_logged_to_mlflow_per_step(tiny_base_model, dataset, mlflow_server, tmp_path) -> None:
    config = config_for(
        tiny_base_model, dataset, str(tmp_path / "out"), max_steps=5, log_every_steps=2, save_every_steps=0
    )
    result, run_id = run_step("train", train, config, mlflow_server, experiment="test-train")
    client = MlflowClient(mlflow_server)
    curve = dict(json.loads((tmp_path / "out" / "metrics.json").read_text())["loss_curve"])
    history = sorted(
        (metric.step, metric.value) for metric in client.get_metric_history(run_id, "train_loss")
    )
    # Logged at step 1, every log_every_steps, and at the last step, with the loss of that step.
    assert [step for step, _ in history] == [1, 2, 4, 5]
    for step, value in history:
        assert value == pytest.approx(curve[step], rel=1e-6)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val_loss"] == pytest.approx(result.val_loss)
    assert run.data.metrics["steps"] == 5
    assert run.data.params["lora.r"] == "8" and run.data.params["max_steps"] == "5"
    assert [m.step for m in client.get_metric_history(run_id, "learning_rate")] == [1, 2, 4, 5]
    # Response tokens per second over each logging window; step 0 holds the result's whole-run figure.
    throughput = client.get_metric_history(run_id, "tokens_per_second")
    assert sorted(m.step for m in throughput) == [0, 1, 2, 4, 5] and all(m.value > 0 for m in throughput)
    assert "gpu_memory_gib" not in run.data.metrics  # logged on CUDA only


def test_multi_node_training_needs_a_placement_and_s3_output(tmp_path) -> None:
    from components.resources import preset_profiles
    from components.train.launch import ClusterPlacement, run_train_step

    config = TrainConfig(base_model="s3://b/base", data="s3://b/data", output=str(tmp_path / "out"))
    with pytest.raises(TrainError, match="needs a cluster placement"):
        run_train_step(config, num_nodes=2, gpus_per_node=8)
    placement = ClusterPlacement(
        pipeline_run="run-1",
        namespace="team",
        image="registry/llmft-train:1.0",
        profile=preset_profiles("p5").train,
    )
    with pytest.raises(TrainError, match="must be on s3://"):
        run_train_step(config, num_nodes=2, gpus_per_node=8, placement=placement)

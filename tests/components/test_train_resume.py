"""components/train resume: a run that crashed and restarted with resume=auto ends exactly where an
uninterrupted run ends (same loss curve, same adapter), with dropout on; incomplete checkpoints are
skipped, resume=never starts over, changed settings are refused, and checkpoints may live on S3."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# Plain helpers shared with test_train.py (pytest puts this folder on sys.path).
from test_train import config_for, make_records, write_dataset

from components import storage
from components.storage import MANIFEST_NAME
from components.train import train as train_module
from components.train.train import LoraSettings, TrainConfig, TrainError, train

STEPS = 12  # 40 records / (4 x 2) = 5 steps per epoch: the run crosses two epoch boundaries


class Crash(RuntimeError):
    """The injected failure."""


def crash_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the `step`-th optimizer step of the next training fail, as a killed pod would."""
    calls = 0

    def crashing(original):
        def accumulate(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == step:
                raise Crash(f"injected crash at step {step}")
            return original(*args, **kwargs)

        return accumulate

    # One of the two runs each step: packed (fused, the default) or padded micro batches.
    for name in ("_accumulate_packed", "_accumulate_gradients"):
        monkeypatch.setattr(train_module, name, crashing(getattr(train_module, name)))


def run_config(base: str, data: str, output: Path | str, **overrides) -> TrainConfig:
    # Dropout stays on (the default 0.05): only a restored RNG state makes the curves agree.
    settings = {"max_steps": STEPS, "save_every_steps": 4, **overrides}
    return config_for(base, data, str(output), **settings)


def metrics_of(output: Path | str) -> dict:
    return json.loads(storage.read_text(storage.join(str(output), "metrics.json")))


def adapter_weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "adapter" / "adapter_model.safetensors")


def assert_same_training(output: Path, reference: Path) -> None:
    """Same loss at every step and the same final adapter, within float tolerance."""
    curve, expected = metrics_of(output)["loss_curve"], metrics_of(reference)["loss_curve"]
    assert [step for step, _ in curve] == list(range(1, STEPS + 1))
    torch.testing.assert_close(
        torch.tensor([loss for _, loss in curve]),
        torch.tensor([loss for _, loss in expected]),
        atol=1e-5,
        rtol=0,
    )
    weights, expected_weights = adapter_weights(output), adapter_weights(reference)
    assert weights.keys() == expected_weights.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, expected_weights[name], atol=1e-5, rtol=0, msg=name)
    assert metrics_of(output)["train_tokens"] == metrics_of(reference)["train_tokens"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return write_dataset(tmp_path_factory.mktemp("data") / "curated", make_records(40, 1), make_records(8, 2))


@pytest.fixture(scope="module")
def reference(tiny_base_model, dataset, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    output = tmp_path_factory.mktemp("reference") / "run"
    train(run_config(tiny_base_model, dataset, output))
    return output


@pytest.fixture(scope="module")
def crashed(tiny_base_model, dataset, tmp_path_factory) -> Path:
    """A run that died in step 11: checkpoints at steps 4 and 8, no adapter, no metrics."""
    output = tmp_path_factory.mktemp("crashed") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        crash_at_step(monkeypatch, 11)
        with pytest.raises(Crash):
            train(run_config(tiny_base_model, dataset, output))
    assert storage.list_dirs(str(output / "checkpoints")) == ["step-00000004", "step-00000008"]
    assert not (output / "metrics.json").exists() and not (output / "adapter").exists()
    return output


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_resume_continues_exactly_like_an_uninterrupted_run(
    tiny_base_model, dataset, reference, crashed, tmp_path
) -> None:
    output = copy_of(crashed, tmp_path)
    result = train(run_config(tiny_base_model, dataset, output))
    assert result.steps == STEPS
    # Step 8 lies 3 steps into the second epoch: the position inside the epoch was restored.
    assert metrics_of(output)["resumed_from"] == str(output / "checkpoints" / "step-00000008")
    assert_same_training(output, reference)
    assert storage.list_dirs(str(output / "checkpoints")) == ["step-00000008", "step-00000012"]
    # This attempt's throughput counts only the 4 steps it trained.
    assert result.train_tokens > 0 and result.tokens_per_second > 0


def test_checkpoint_holds_what_resume_needs(tiny_base_model, dataset, crashed) -> None:
    checkpoint = crashed / "checkpoints" / "step-00000008"
    manifest = storage.require_complete(str(checkpoint))
    assert manifest.metadata["step"] == 8 and manifest.metadata["epoch"] == 1
    assert manifest.metadata["world_size"] == 1
    settings = manifest.metadata["settings"]
    assert settings["seed"] == 42 and settings["micro_batch_size"] == 4 and settings["global_batch_size"] == 8
    assert settings["max_length"] == 128 and settings["lora.r"] == 8
    assert settings["data digest"] == storage.read_manifest(dataset).digest
    assert settings["base_model digest"] == storage.read_manifest(tiny_base_model).digest
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["position"]) == (8, 1, 3)
    assert [step for step, _ in state["loss_curve"]] == list(range(1, 9))
    assert len(state["rng"]) == 1 and {"python", "torch"} <= set(state["rng"][0])


def test_resume_at_an_epoch_boundary(tiny_base_model, dataset, reference, tmp_path, monkeypatch) -> None:
    """A checkpoint after an epoch's last step continues with the next epoch's first step."""
    output = tmp_path / "run"
    crash_at_step(monkeypatch, 7)
    with pytest.raises(Crash):
        train(run_config(tiny_base_model, dataset, output, save_every_steps=5))
    monkeypatch.undo()
    state = torch.load(output / "checkpoints" / "step-00000005" / "trainer_state.pt", weights_only=True)
    assert (state["epoch"], state["position"]) == (0, 5)
    train(run_config(tiny_base_model, dataset, output, save_every_steps=5))
    assert metrics_of(output)["resumed_from"].endswith("step-00000005")
    assert_same_training(output, reference)


def test_incomplete_newest_checkpoint_is_ignored(
    tiny_base_model, dataset, reference, crashed, tmp_path, caplog
) -> None:
    output = copy_of(crashed, tmp_path)
    (output / "checkpoints" / "step-00000008" / MANIFEST_NAME).unlink()  # its writer "died" mid-upload
    with caplog.at_level(logging.WARNING, logger="components.train.train"):
        train(run_config(tiny_base_model, dataset, output))
    assert "ignoring checkpoint" in caplog.text and "step-00000008" in caplog.text
    assert metrics_of(output)["resumed_from"] == str(output / "checkpoints" / "step-00000004")
    assert_same_training(output, reference)
    # The step-8 checkpoint was written again, complete this time.
    storage.require_complete(str(output / "checkpoints" / "step-00000008"))


def test_resume_never_starts_over(tiny_base_model, dataset, reference, crashed, tmp_path, caplog) -> None:
    output = copy_of(crashed, tmp_path)
    with caplog.at_level(logging.WARNING, logger="components.train.train"):
        train(run_config(tiny_base_model, dataset, output, resume="never"))
    assert metrics_of(output)["resumed_from"] is None
    assert "removing the checkpoints of an earlier run" in caplog.text
    assert_same_training(output, reference)  # from step 1, so the curve is whole anyway
    assert storage.list_dirs(str(output / "checkpoints")) == ["step-00000008", "step-00000012"]


def test_a_finished_run_resumes_to_the_same_outputs(tiny_base_model, dataset, reference, tmp_path) -> None:
    """A retried task whose training had finished trains nothing and writes the same adapter."""
    output = copy_of(reference, tmp_path)
    shutil.rmtree(output / "adapter")
    (output / "metrics.json").unlink()
    result = train(run_config(tiny_base_model, dataset, output))
    assert result.steps == STEPS
    assert metrics_of(output)["resumed_from"].endswith("step-00000012")
    assert_same_training(output, reference)
    # A checkpoint past the run's length is refused rather than silently used.
    with pytest.raises(TrainError, match=r"at step 12, past this run's 8 steps"):
        train(run_config(tiny_base_model, dataset, output, max_steps=8))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seed": 7}, "seed: checkpoint 42, this run 7"),
        ({"micro_batch_size": 2}, "micro_batch_size: checkpoint 4, this run 2"),
        ({"global_batch_size": 16}, "global_batch_size: checkpoint 8, this run 16"),
        ({"max_length": 64}, "max_length: checkpoint 128, this run 64"),
        ({"lora": LoraSettings(r=4, alpha=16)}, "lora.r: checkpoint 8, this run 4"),
        (
            {"lora": LoraSettings(r=8, alpha=16, target_modules=["q_proj", "v_proj"])},
            "lora.target_modules: checkpoint",
        ),
    ],
)
def test_changed_settings_are_refused(
    tiny_base_model, dataset, crashed, tmp_path, overrides, message
) -> None:
    output = copy_of(crashed, tmp_path)
    with pytest.raises(TrainError, match=r"cannot resume from .*step-00000008") as error:
        train(run_config(tiny_base_model, dataset, output, **overrides))
    assert message in str(error.value)
    assert "resume: never" in str(error.value)
    # Nothing was trained or written.
    assert storage.list_dirs(str(output / "checkpoints")) == ["step-00000004", "step-00000008"]
    assert not (output / "metrics.json").exists()


def test_other_data_is_refused(tiny_base_model, crashed, tmp_path) -> None:
    other = write_dataset(tmp_path / "other", make_records(40, 5), make_records(8, 2))
    output = copy_of(crashed, tmp_path)
    with pytest.raises(TrainError, match=r"data digest: checkpoint '[0-9a-f]{64}', this run '[0-9a-f]{64}'"):
        train(run_config(tiny_base_model, other, output))


def test_resume_with_checkpoints_on_s3(tiny_base_model, dataset, reference, s3_bucket, tmp_path) -> None:
    output = tmp_path / "run"
    checkpoints = s3_bucket.uri("checkpoints/run-1")
    with pytest.MonkeyPatch.context() as monkeypatch:
        crash_at_step(monkeypatch, 7)
        with pytest.raises(Crash):
            train(run_config(tiny_base_model, dataset, output, checkpoint_uri=checkpoints))
    assert storage.list_dirs(checkpoints) == ["step-00000004"]
    # An unfinished upload of a newer checkpoint (files, no manifest) is skipped.
    s3_bucket.client.put_object(
        Bucket=s3_bucket.name, Key="checkpoints/run-1/step-00000006/x", Body=b"partial"
    )
    train(run_config(tiny_base_model, dataset, output, checkpoint_uri=checkpoints))
    assert metrics_of(output)["resumed_from"] == f"{checkpoints}/step-00000004"
    assert_same_training(output, reference)
    assert storage.list_dirs(checkpoints) == ["step-00000008", "step-00000012"]
    assert not (output / "checkpoints").exists()

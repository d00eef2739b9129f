"""The whole llm_finetune DAG under kfp.local, on the sample data and the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from components import storage
from components.rollout.local_triton import stop_local_server
from components.rollout.rollout import RolloutConfig, rollout
from components.sample.dataset import SAMPLE_PATH
from pipelines import local
from pipelines.cli import main

LABELS = {"positive", "negative", "sports", "food", "weather", "music"}
# Fewer epochs than `llmft local` uses: enough for the tiny model to pass the gate, faster in CI.
FAST = {"epochs": 4.0, "max_eval_records": 32}
REVIEW = "Is this review positive or negative: the coffee was superb and the book was lovely."


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> local.LocalRun:
    return local.run_local(tmp_path_factory.mktemp("local-run"), overrides=FAST)


def test_run_succeeds_and_every_step_reports(finished_run):
    assert finished_run.succeeded, finished_run.outcome
    assert set(finished_run.summaries) == set(local.PIPELINE_STEPS)


def test_curated_data_accounts_for_every_line(finished_run):
    curate = finished_run.summaries["curate"]["result"]
    data = Path(curate["output"])
    storage.require_complete(str(data))
    lines = len(SAMPLE_PATH.read_text().splitlines())
    assert curate["input_records"] == lines
    assert curate["train_records"] + curate["val_records"] + curate["rejected"] == lines
    assert curate["rejected_by_reason"]["malformed_json"] == 1
    assert len((data / "rejects.jsonl").read_text().splitlines()) == curate["rejected"]


def test_adapter_and_loss_going_down(finished_run):
    train = finished_run.summaries["train"]["result"]
    adapter = Path(train["adapter"])
    storage.require_complete(str(adapter))
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert train["final_loss"] < train["first_loss"] / 4


def test_tuned_model_beats_base_and_gate_passes(finished_run):
    evaluation = finished_run.summaries["evaluate"]["result"]
    assert evaluation["passed"] is True
    assert evaluation["tuned"]["exact_match"] > evaluation["base"]["exact_match"] + 0.5
    assert evaluation["tuned"]["val_loss"] < evaluation["base"]["val_loss"]
    metrics = json.loads((Path(evaluation["output"]) / "metrics.json").read_text())
    assert metrics["gate"]["passed"] is True
    assert "<svg" in (Path(evaluation["output"]) / "report.html").read_text()


def test_merged_checkpoint_and_registered_model(finished_run):
    from mlflow import MlflowClient

    export = finished_run.summaries["export"]["result"]
    checkpoint = Path(export["checkpoint"])
    storage.require_complete(str(checkpoint))
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "tokenizer.json").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{finished_run.outputs['MLflow store']}")
    version = client.get_model_version(export["registered_model"], export["model_version"])
    assert version.source == export["checkpoint"]
    assert version.tags["dataset_sha256"] == finished_run.summaries["curate"]["result"]["dataset_sha256"]
    assert version.tags["pipeline_run"] == finished_run.pipeline_run


def test_rollout_answered_through_triton(finished_run):
    rollout_result = finished_run.summaries["rollout"]["result"]
    assert rollout_result["healthy"] is True
    assert rollout_result["endpoint_http"].startswith("http://127.0.0.1:")
    assert rollout_result["sample_output"].strip()


def test_built_repository_serves_a_generate_request(finished_run):
    repository = finished_run.summaries["build"]["result"]["repository"]
    result = rollout(RolloutConfig(repository=repository, keep_running=True))
    try:
        response = requests.post(
            f"{result.endpoint_http}/v2/models/llm/generate",
            json={"text_input": REVIEW, "max_tokens": 4},
            timeout=60,
        )
        response.raise_for_status()
        assert response.json()["text_output"].strip() in LABELS
    finally:
        assert stop_local_server(result.server_pid)


def test_gate_failure_stops_before_export(tmp_path, capsys):
    exit_code = main(
        [
            "local",
            "--workdir",
            str(tmp_path),
            "--param",
            "max_steps=2",
            "--param",
            "max_eval_records=8",
            "--param",
            "gate_min_exact_match_gain=2.0",
        ]
    )
    out = capsys.readouterr().out
    assert exit_code == 1
    assert "gate: FAILED" in out
    assert "The gate did not pass" in out
    run_dir = next((tmp_path / "storage" / "runs").iterdir())
    assert json.loads((run_dir / "outcome.json").read_text())["state"] == "SUCCEEDED"
    assert not (run_dir / "export").exists()


def test_failing_step_is_recorded_by_the_exit_handler(tmp_path, capsys):
    exit_code = main(["local", "--workdir", str(tmp_path), "--param", "lora_target_modules=no_such_layer"])
    assert exit_code == 1
    assert "the train step failed" in capsys.readouterr().out
    run_dir = next((tmp_path / "storage" / "runs").iterdir())
    outcome = json.loads((run_dir / "outcome.json").read_text())
    assert outcome["state"] == "FAILED" and outcome["succeeded"] is False
    assert {path.stem for path in (run_dir / "summaries").glob("*.json")} == {"curate", "finalize"}


def test_second_run_with_equal_inputs_reuses_the_outputs(finished_run):
    """Outputs are addressed by what produced them: a rerun lands on the same curated data and adapter."""
    again = local.run_local(finished_run.workdir, overrides=FAST)
    assert again.succeeded, again.outcome
    assert again.pipeline_run != finished_run.pipeline_run
    for step, field in (("curate", "output"), ("train", "adapter")):
        assert again.summaries[step]["result"][field] == finished_run.summaries[step]["result"][field], step
    assert (
        again.summaries["curate"]["result"]["dataset_sha256"]
        == finished_run.summaries["curate"]["result"]["dataset_sha256"]
    )

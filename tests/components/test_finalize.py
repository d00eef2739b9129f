"""components/finalize: the exit task records how a pipeline run ended."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components import storage
from components.finalize.finalize import FinalizeConfig, finalize
from components.tracking import run_step


def read_outcome(root: Path, run: str) -> dict:
    return json.loads((root / "runs" / run / "outcome.json").read_text())


def test_success_is_recorded(tmp_path: Path) -> None:
    result = finalize(FinalizeConfig(storage_root=str(tmp_path), pipeline_run="run-1", state="SUCCEEDED"))
    assert result.succeeded and result.state == "SUCCEEDED"
    assert result.outcome == str(tmp_path / "runs" / "run-1" / "outcome.json")
    outcome = read_outcome(tmp_path, "run-1")
    finished = datetime.fromisoformat(outcome.pop("finished_at"))
    assert finished.tzinfo is not None
    assert outcome == {
        "pipeline_run": "run-1",
        "state": "SUCCEEDED",
        "succeeded": True,
        "error_message": "",
        "failed_task": "",
    }
    assert "ended SUCCEEDED" in result.summary() and result.outcome in result.summary()


def test_failure_is_recorded_with_the_task_and_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = FinalizeConfig(
        storage_root=str(tmp_path),
        pipeline_run="run-2",
        state="FAILED",
        error_message="train-op: TrainError: train.jsonl holds no records",
        failed_task="train-op",
    )
    with caplog.at_level(logging.ERROR):
        result = finalize(config)
    assert not result.succeeded and result.state == "FAILED"
    outcome = read_outcome(tmp_path, "run-2")
    assert outcome["state"] == "FAILED" and outcome["succeeded"] is False
    assert outcome["failed_task"] == "train-op"
    assert outcome["error_message"] == "train-op: TrainError: train.jsonl holds no records"
    assert "run-2 ended FAILED" in caplog.text and "holds no records" in caplog.text


@pytest.mark.parametrize(("state", "succeeded"), [("succeeded", True), ("CANCELED", False), ("", False)])
def test_only_success_counts_as_success(tmp_path: Path, state: str, succeeded: bool) -> None:
    result = finalize(FinalizeConfig(storage_root=str(tmp_path), pipeline_run="r", state=state))
    assert result.succeeded is succeeded
    assert read_outcome(tmp_path, "r")["succeeded"] is succeeded


def test_outcome_on_s3(s3_bucket) -> None:
    config = FinalizeConfig(storage_root=s3_bucket.uri("root"), pipeline_run="run-3", state="FAILED")
    result = finalize(config.model_copy(update={"failed_task": "export-op", "error_message": "boom"}))
    assert result.outcome == s3_bucket.uri("root/runs/run-3/outcome.json")
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="root/runs/run-3/outcome.json")["Body"]
    outcome = json.loads(body.read())
    assert (outcome["state"], outcome["failed_task"], outcome["error_message"]) == (
        "FAILED",
        "export-op",
        "boom",
    )
    assert json.loads(storage.read_text(result.outcome)) == outcome


@pytest.mark.parametrize(
    ("state", "failed_task"), [("SUCCEEDED", ""), ("FAILED", "evaluate-op")], ids=["succeeded", "failed"]
)
def test_final_state_is_tagged_in_mlflow(
    mlflow_server: str, tmp_path: Path, state: str, failed_task: str
) -> None:
    config = FinalizeConfig(
        storage_root=str(tmp_path), pipeline_run="run-4", state=state, failed_task=failed_task
    )
    result, run_id = run_step("finalize", finalize, config, mlflow_server, "test-finalize", "run-4")
    run = MlflowClient(mlflow_server).get_run(run_id)
    # The exit task itself succeeds whatever the pipeline did, so it can always report.
    assert run.info.status == "FINISHED"
    assert run.data.tags["llmft.pipeline_state"] == state
    assert run.data.tags["llmft.failed_task"] == failed_task
    assert run.data.tags["llmft.pipeline_run"] == "run-4"
    assert run.data.metrics == {"succeeded": float(result.succeeded)}

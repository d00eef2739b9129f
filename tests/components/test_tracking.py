"""components/tracking.py against a real `mlflow server` (sqlite store) on loopback."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pydantic import BaseModel

from components import tracking
from components.tracking import (
    NULL_TRACKER,
    PIPELINE_RUN_TAG,
    STEP_TAG,
    Tracker,
    resolve_tracking_uri,
    run_step,
    step_run,
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- resolve_tracking_uri ---------------------------------------------------------------


def test_explicit_uri_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_tracking_uri("http://127.0.0.1:2", str(tmp_path)) == "http://127.0.0.1:2"


def test_environment_comes_next(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_tracking_uri("", str(tmp_path)) == "http://127.0.0.1:1"
    assert resolve_tracking_uri(None, str(tmp_path)) == "http://127.0.0.1:1"
    assert not (tmp_path / "mlflow.db").exists()


def test_local_sqlite_store_is_the_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run" / "dir"
    uri = resolve_tracking_uri("", str(run_dir))
    assert uri == f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    assert run_dir.is_dir()  # created, so sqlite can open the file there


@pytest.mark.parametrize(("explicit", "env"), [("disabled", "http://127.0.0.1:1"), ("", "disabled")])
def test_disabled_turns_tracking_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, explicit: str, env: str
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    assert resolve_tracking_uri(explicit, str(tmp_path)) is None
    assert not (tmp_path / "mlflow.db").exists()


def test_nothing_set_with_s3_root_is_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with caplog.at_level(logging.WARNING, logger=tracking.__name__):
        assert resolve_tracking_uri("", "s3://bucket/prefix") is None
        assert resolve_tracking_uri(None, None) is None
    assert "MLflow tracking is off" in caplog.text


# --- the no-op tracker ---------------------------------------------------------------------


def test_null_tracker_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_client(*args, **kwargs):
        raise AssertionError("the null tracker must not talk to MLflow")

    monkeypatch.setattr(Tracker, "_client", no_client)
    assert not NULL_TRACKER.enabled and NULL_TRACKER.run_id is None
    assert NULL_TRACKER.log_params({"a": 1, "b": {"c": 2}}) is None
    assert NULL_TRACKER.log_metrics({"loss": 1.0}, step=3) is None
    assert NULL_TRACKER.set_tags({"k": "v"}) is None
    assert NULL_TRACKER.register_model_version("m", "s3://b/m", {"k": "v"}) is None
    with step_run("train", None) as tracker:
        assert tracker is NULL_TRACKER


# --- step runs on the server -----------------------------------------------------------------


def test_step_run_finishes_with_tags(mlflow_server: str) -> None:
    experiment = unique("exp")
    with step_run("curate", mlflow_server, experiment=experiment, pipeline_run="kfp-123") as tracker:
        assert tracker.enabled and tracker.tracking_uri == mlflow_server
        run_id = tracker.run_id
        assert MlflowClient(mlflow_server).get_run(run_id).info.status == "RUNNING"
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "curate"
    assert run.data.tags[STEP_TAG] == "curate"
    assert run.data.tags[PIPELINE_RUN_TAG] == "kfp-123"
    found = client.get_experiment_by_name(experiment)
    assert found is not None and run.info.experiment_id == found.experiment_id
    # A second step of the same pipeline joins the same experiment; no pipeline run, no tag.
    with step_run("train", mlflow_server, experiment=experiment) as tracker:
        second = tracker.run_id
    assert client.get_run(second).info.experiment_id == found.experiment_id
    assert PIPELINE_RUN_TAG not in client.get_run(second).data.tags
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{STEP_TAG}` = 'curate'")
    assert [r.info.run_id for r in runs] == [run_id]


def test_step_run_fails_when_the_body_raises(mlflow_server: str) -> None:
    run_ids: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), step_run("evaluate", mlflow_server, unique("exp")) as t:
        run_ids.append(t.run_id)
        raise RuntimeError("boom")
    assert MlflowClient(mlflow_server).get_run(run_ids[0]).info.status == "FAILED"


class Inner(BaseModel):
    r: int = 8
    targets: list[str] = ["q_proj", "v_proj"]


class StepConfig(BaseModel):
    data: str = "s3://bucket/data"
    learning_rate: float = 3e-4
    lora: Inner = Inner()
    note: str = "x" * 7000


class StepResult(BaseModel):
    steps: int
    final_loss: float
    adapter: str
    curve: list[tuple[int, float]]


def test_run_step_logs_params_and_metrics(mlflow_server: str) -> None:
    seen: list[Tracker] = []

    def step(config: StepConfig, tracker: Tracker) -> StepResult:
        seen.append(tracker)
        tracker.log_metrics({"train_loss": 2.5}, step=1)
        tracker.log_metrics({"train_loss": 1.5}, step=2)
        return StepResult(steps=2, final_loss=1.5, adapter="s3://b/a", curve=[(1, 2.5), (2, 1.5)])

    result, run_id = run_step("train", step, StepConfig(), mlflow_server, unique("exp"), "kfp-9")
    assert result.steps == 2 and run_id is not None
    assert seen[0].run_id == run_id and seen[0].enabled
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["data"] == "s3://bucket/data"
    assert float(params["learning_rate"]) == 3e-4
    assert params["lora.r"] == "8"  # nested settings are flattened with dots
    assert params["lora.targets"] == "['q_proj', 'v_proj']"
    assert params["note"] == "x" * 6000  # cut to MLflow's limit instead of failing the step
    # Numbers become metrics; strings and curves do not.
    assert run.data.metrics == {"steps": 2.0, "final_loss": 1.5, "train_loss": 1.5}
    history = client.get_metric_history(run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.5), (2, 1.5)]


def test_run_step_without_tracker_argument_and_with_tracking_off() -> None:
    def step(config: StepConfig) -> StepResult:
        return StepResult(steps=1, final_loss=0.5, adapter="a", curve=[])

    result, run_id = run_step("train", step, StepConfig(), None)
    assert result.final_loss == 0.5 and run_id is None


def test_run_step_marks_a_failed_step(mlflow_server: str) -> None:
    experiment = unique("exp")

    def step(config: StepConfig) -> StepResult:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_step("curate", step, StepConfig(), mlflow_server, experiment)
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.params["lora.r"] == "8"  # params were logged before the step ran


def test_set_tags(mlflow_server: str) -> None:
    with step_run("finalize", mlflow_server, unique("exp")) as tracker:
        tracker.set_tags({"llmft.pipeline_state": "FAILED", "count": 3})
    tags = MlflowClient(mlflow_server).get_run(tracker.run_id).data.tags
    assert tags["llmft.pipeline_state"] == "FAILED" and tags["count"] == "3"


# --- model registry ------------------------------------------------------------------------


def test_register_model_version_creates_once_then_increments(mlflow_server: str) -> None:
    name = unique("model")
    client = MlflowClient(mlflow_server)
    with step_run("export", mlflow_server, unique("exp")) as tracker:
        first = tracker.register_model_version(name, "s3://bucket/runs/1/export", {"dataset": "abc"})
        second = tracker.register_model_version(name, "s3://bucket/runs/2/export", {"dataset": "def"})
    assert (first, second) == ("1", "2")
    assert [model.name for model in client.search_registered_models(f"name = '{name}'")] == [name]
    version = client.get_model_version(name, "2")
    assert version.source == "s3://bucket/runs/2/export"
    assert version.run_id == tracker.run_id
    assert version.tags == {"dataset": "def"}
    assert client.get_model_version(name, "1").tags == {"dataset": "abc"}


def test_server_refuses_local_sources_without_failing_the_step(
    mlflow_server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server cannot read a path on the machine that ran the step: warn, do not crash."""
    name = unique("model")
    with (
        caplog.at_level(logging.WARNING, logger=tracking.__name__),
        step_run("export", mlflow_server, unique("exp")) as tracker,
    ):
        assert tracker.register_model_version(name, str(tmp_path / "merged"), {}) is None
    assert "does not accept a local path" in caplog.text
    assert MlflowClient(mlflow_server).get_run(tracker.run_id).info.status == "FINISHED"
    assert MlflowClient(mlflow_server).search_model_versions(f"name = '{name}'") == []


def test_local_sqlite_store_registers_local_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The laptop default (no server, sqlite in the run directory) registers where the model lies."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri("", str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)  # a store without an artifact root writes ./mlruns
    source = str(tmp_path / "run" / "export")
    with step_run("export", uri) as tracker:
        assert tracker.register_model_version("llmft-model", source, {"k": "v"}) == "1"
    assert MlflowClient(uri).get_model_version("llmft-model", "1").source == source

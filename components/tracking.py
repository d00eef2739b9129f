"""MLflow tracking for every step: one run per step, grouped by the pipeline run.

The tracking URI comes from, in order: the explicit argument (a pipeline parameter), the
MLFLOW_TRACKING_URI environment variable, a sqlite store in the local run directory.
"disabled" turns tracking off. Steps receive a `Tracker`; with tracking off it is a
no-op with the same methods, so step code never branches on it.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from components.redact import redact

log = logging.getLogger(__name__)

DISABLED = "disabled"
# An http(s) tracking server is asked once, with these (connect, read) timeouts, before a step does
# any work: MLflow's own client retries a request 7 times with backoff (about 4 minutes) by
# default, so an unreachable server would cost that much before the step failed. Name resolution
# is the system resolver's and has its own timeout.
REACHABILITY_TIMEOUT_S = (5.0, 10.0)
# What --help says about the wait (keep in step with the timeouts above).
WAIT_HELP = (
    "an http(s) server that does not answer fails the step within 15 s, before any work; later "
    "requests follow MLflow's MLFLOW_HTTP_REQUEST_TIMEOUT (120 s) and MLFLOW_HTTP_REQUEST_MAX_RETRIES (7)"
)
PIPELINE_RUN_TAG = "llmft.pipeline_run"
STEP_TAG = "llmft.step"
# Tag prefix of a metric whose value was not a finite number (see Tracker.log_metrics).
NONFINITE_TAG_PREFIX = "llmft.nonfinite."


class TrackingUnreachable(RuntimeError):
    """The MLflow tracking server did not answer the reachability check."""


def check_reachable(uri: str, timeout_s: tuple[float, float] = REACHABILITY_TIMEOUT_S) -> None:
    """Raise TrackingUnreachable unless an http(s) tracking server answers within `timeout_s`.

    Any HTTP answer counts (a 401 or 404 from a proxy too: MLflow's own errors then say more);
    other stores (sqlite, file, databricks) are not network endpoints of ours and pass.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        # requests sends a URL's user:password as basic auth, as MLflow's client does.
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s, allow_redirects=False).close()
    except requests.RequestException as error:
        reason = {
            requests.ConnectTimeout: f"no connection within {timeout_s[0]:g} s",
            requests.ReadTimeout: f"connected, but no answer within {timeout_s[1]:g} s",
        }.get(type(error), f"{type(error).__name__}: {redact(error)}")
        raise TrackingUnreachable(
            f"MLflow tracking server {redact(uri)} is not reachable ({reason}); check mlflow_tracking_uri "
            f"or MLFLOW_TRACKING_URI, or set it to '{DISABLED}' to run without tracking"
        ) from None


def resolve_tracking_uri(explicit: str | None, local_dir: str | None = None) -> str | None:
    """Pick the tracking URI; None means tracking is off."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if uri == DISABLED:
        return None
    if uri:
        return uri
    if local_dir and not local_dir.startswith("s3://"):
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{Path(local_dir).resolve() / 'mlflow.db'}"
    log.warning("MLflow tracking is off: set the mlflow_tracking_uri parameter or MLFLOW_TRACKING_URI")
    return None


class Tracker:
    """Logs to one MLflow run; every method is a no-op when `run_id` is None."""

    def __init__(self, tracking_uri: str | None = None, run_id: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def _client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        flat = _flatten(params)
        self._client().log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        numbers = {k: float(v) for k, v in _flatten(metrics).items() if isinstance(v, int | float)}
        # A NaN or inf metric breaks MLflow's charts and run comparisons, and a missing point reads as
        # "not measured": it is recorded as a tag that says what it was, and at which step.
        self._client().log_batch(
            self.run_id,
            metrics=[Metric(k, v, now, step) for k, v in numbers.items() if math.isfinite(v)],
            tags=[
                RunTag(f"{NONFINITE_TAG_PREFIX}{k}", f"{v} at step {step}")
                for k, v in numbers.items()
                if not math.isfinite(v)
            ],
        )

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.enabled:
            return
        for key, value in tags.items():
            self._client().set_tag(self.run_id, key, str(value))

    def register_model_version(self, name: str, source: str, tags: Mapping[str, str]) -> str | None:
        """Register `source` (where the model already lies) as a new version of `name`."""
        if not self.enabled:
            return None
        from mlflow.exceptions import MlflowException

        client = self._client()
        try:
            client.create_registered_model(name)
        except MlflowException as error:
            if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
                raise
        try:
            version = client.create_model_version(name, source=source, run_id=self.run_id, tags=dict(tags))
        except MlflowException as error:
            # A tracking server refuses local paths outside the run's artifact directory
            # (it cannot read them); the model stays where it is, just unregistered.
            local_source = "://" not in source or source.startswith("file:")
            if not (local_source and "INVALID_PARAMETER_VALUE" in str(error.error_code)):
                raise
            log.warning(
                "%s not registered as a version of %r: the MLflow server at %s does not accept a "
                "local path as a model source (%s); write the model to s3:// to register it",
                source,
                name,
                redact(self.tracking_uri),
                redact(error.message),
            )
            return None
        return str(version.version)


NULL_TRACKER = Tracker()


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, list | tuple) and value and isinstance(value[0], Mapping | list | tuple):
            continue  # curves and tables are logged step by step, not as one value
        else:
            flat[name] = value
    return flat


@contextmanager
def step_run(
    step: str,
    tracking_uri: str | None,
    experiment: str = "llmft",
    pipeline_run: str = "",
) -> Iterator[Tracker]:
    """Open an MLflow run for one step; it ends FAILED if the step raises."""
    if tracking_uri is None:
        yield NULL_TRACKER
        return
    check_reachable(tracking_uri)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    tags = {STEP_TAG: step, "mlflow.runName": step}
    if pipeline_run:
        tags[PIPELINE_RUN_TAG] = pipeline_run
    run = client.create_run(experiment_id, tags=tags, run_name=step)
    tracker = Tracker(tracking_uri, run.info.run_id)
    try:
        yield tracker
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


ResultT = TypeVar("ResultT", bound=BaseModel)


def run_step(
    step: str,
    function: Callable[..., ResultT],
    config: BaseModel,
    tracking_uri: str | None,
    experiment: str = "llmft",
    pipeline_run: str = "",
) -> tuple[ResultT, str | None]:
    """Run one step inside its MLflow run: config as params, the result's numbers as metrics.

    Returns the result and the MLflow run id (None with tracking off). Steps that log
    during their work (train's loss curve) or register models take the tracker as a
    keyword argument `tracker`.
    """
    with step_run(step, tracking_uri, experiment, pipeline_run) as tracker:
        tracker.log_params(config.model_dump(mode="json"))
        takes_tracker = "tracker" in inspect.signature(function).parameters
        result = function(config, tracker=tracker) if takes_tracker else function(config)
        tracker.log_metrics(result.model_dump(mode="json"))
        return result, tracker.run_id

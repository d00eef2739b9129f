"""The pipeline's exit task: record how the run ended, whatever happened before.

It runs under the pipeline's ExitHandler, after success or failure, and writes
runs/<run>/outcome.json beside the step outputs plus an MLflow run tagged with the final
state, so scheduled runs leave a trace even when a step failed before logging anything.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from components import jsonout, storage
from components.tracking import NULL_TRACKER, Tracker

log = logging.getLogger(__name__)


class FinalizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    storage_root: str = Field(description="The pipeline's storage root (path or s3://).")
    pipeline_run: str = Field(description="The KFP run id.")
    state: str = Field(description="Final state KFP reports for the tasks under the exit handler.")
    error_message: str = Field("", description="KFP's error message, if any.")
    failed_task: str = Field("", description="The task that failed, if any.")
    training_job_namespace: str = Field(
        "", description="Namespace of the run's PyTorchJob, when training ran on several nodes; else empty."
    )
    training_job_cleanup: Literal["keep", "delete"] = Field(
        "keep", description="What happens to that PyTorchJob when the run did not succeed."
    )


class FinalizeResult(BaseModel):
    outcome: str
    state: str
    succeeded: bool

    def summary(self) -> str:
        return f"pipeline run ended {self.state}; outcome recorded at {self.outcome}"


def finalize(config: FinalizeConfig, tracker: Tracker = NULL_TRACKER) -> FinalizeResult:
    succeeded = config.state.upper() == "SUCCEEDED"
    outcome = {
        "pipeline_run": config.pipeline_run,
        "state": config.state,
        "succeeded": succeeded,
        "error_message": config.error_message,
        "failed_task": config.failed_task,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    uri = storage.join(config.storage_root, "runs", config.pipeline_run, "outcome.json")
    storage.write_text(uri, jsonout.dumps(outcome, indent=2))
    tracker.set_tags({"llmft.pipeline_state": config.state, "llmft.failed_task": config.failed_task})
    if not succeeded:
        log.error("pipeline run %s ended %s: %s", config.pipeline_run, config.state, config.error_message)
        if config.training_job_namespace:
            from components.train import pytorchjob

            # The job is named after train's output address, not the run: found by the run's label.
            namespace = config.training_job_namespace
            for name in pytorchjob.jobs_of_run(config.pipeline_run, namespace):
                deleted = pytorchjob.cleanup(name, namespace, config.training_job_cleanup)
                log.info("PyTorchJob %s/%s: %s", namespace, name, "deleted" if deleted else "kept")
    return FinalizeResult(outcome=uri, state=config.state, succeeded=succeeded)

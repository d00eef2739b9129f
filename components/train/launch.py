"""Train on every GPU of one node: torchrun in a subprocess, one process per GPU.

The KFP train task calls `run_torchrun` when it trains on more than one GPU (`processes_per_node`).
The workers run this module (`python -m components.train.launch`): each reads the whole
TrainConfig (YAML or JSON)
from the environment variable LLMFT_TRAIN_CONFIG and calls `train`, which joins the process
group and trains its share of every step (see train.py). Rank 0 writes the adapter,
checkpoints and metrics.json; `run_torchrun` reads the result from that metrics.json.
PyTorchJob pods (pytorchjob.py) run the same module under torchrun on every node.

MLflow: the task's run is opened by the calling process; its id travels to the workers
in LLMFT_MLFLOW_RUN_ID, so rank 0 logs the per-step metrics into that same run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections import deque
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components import storage
from components.redact import describe_validation_error
from components.resources import ResourceProfile
from components.tracking import NULL_TRACKER, Tracker
from components.train import distributed
from components.train.train import TrainConfig, TrainError, TrainResult, train

log = logging.getLogger(__name__)

CONFIG_ENV = "LLMFT_TRAIN_CONFIG"
MLFLOW_RUN_ENV = "LLMFT_MLFLOW_RUN_ID"
TAIL_LINES = 60
# After SIGTERM, torchrun stops its workers and exits; give it this long before SIGKILL.
_STOP_GRACE_S = 30


def torchrun_command(nproc_per_node: int) -> list[str]:
    """torchrun for one node, as `python -m torch.distributed.run` so the workers use this interpreter."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        "-m",
        "components.train.launch",
    ]


def read_result(output: str) -> TrainResult:
    """The TrainResult that rank 0 wrote to `output`/metrics.json."""
    metrics = json.loads(storage.read_text(storage.join(output, "metrics.json")))
    # JSON has no NaN: a number that was not finite (val_loss without a validation set) is null there.
    fields = {
        name: math.nan if metrics[name] is None and info.annotation is float else metrics[name]
        for name, info in TrainResult.model_fields.items()
    }
    return TrainResult(**fields)


def stop_torchrun(process: subprocess.Popen) -> None:
    """SIGTERM torchrun (it stops its workers), then SIGKILL its process group if it lingers.

    torchrun runs in a session of its own (start_new_session), so its group id is its pid
    and the signal reaches nothing else.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_torchrun(
    config: TrainConfig,
    nproc_per_node: int,
    timeout_s: float | None = None,
    tracker: Tracker = NULL_TRACKER,
) -> TrainResult:
    """Train with `nproc_per_node` processes on this node; the result comes from rank 0's metrics.json.

    Raises TrainError, with the tail of torchrun's output, when torchrun fails or outlasts `timeout_s`.
    """
    if nproc_per_node < 1:
        raise TrainError(f"nproc_per_node={nproc_per_node}: torchrun needs at least one process")
    env = {**os.environ, CONFIG_ENV: config.model_dump_json(), "PYTHONUNBUFFERED": "1"}
    if tracker.enabled:
        env[MLFLOW_RUN_ENV] = str(tracker.run_id)
        env["MLFLOW_TRACKING_URI"] = str(tracker.tracking_uri)
    command = torchrun_command(nproc_per_node)
    log.info("starting %s", shlex.join(command))
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def stream_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.info("torchrun: %s", line.rstrip())
            tail.append(line.rstrip())

    reader = threading.Thread(target=stream_output, name="torchrun-output", daemon=True)
    reader.start()
    try:
        returncode = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_torchrun(process)
        reader.join(timeout=10)
        raise TrainError(
            f"torchrun ({nproc_per_node} processes) did not finish within {timeout_s:.0f} s and was "
            "stopped; last output:\n" + "\n".join(tail)
        ) from None
    except BaseException:  # interrupted (KeyboardInterrupt, task cancelled): leave no workers behind
        stop_torchrun(process)
        raise
    reader.join(timeout=10)
    if returncode != 0:
        raise TrainError(
            f"torchrun ({nproc_per_node} processes) failed with exit code {returncode}; last output:\n"
            + "\n".join(tail)
        )
    return read_result(config.output)


class ClusterPlacement(BaseModel):
    """Where a multi-node train runs: fixed when the pipeline is compiled, plus the run's id."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pipeline_run: str = Field(description="KFP run id: the PyTorchJob's llmft.io/pipeline-run label.")
    namespace: str = Field(description="Namespace of the PyTorchJob.")
    image: str = Field(description="Train image for the job's pods.")
    profile: ResourceProfile = Field(description="The train step's cluster profile (GPUs, EFA, shm, ...).")
    env_from_secrets: list[str] = Field(default_factory=list, description="Secrets exposed as environment.")
    cleanup: Literal["delete", "keep"] = Field("keep", description="What to do with a failed job.")


def gpus_used(profile: ResourceProfile, gpus_per_node: int) -> int:
    """GPUs one training pod of `profile` uses: `gpus_per_node`, where 0 means all the pod has."""
    if gpus_per_node < 0:
        raise TrainError(f"gpus_per_node={gpus_per_node}: use 0 (all GPUs of the pod) or a positive count")
    return gpus_per_node or profile.gpus


def processes_per_node(gpus_per_node: int, visible_gpus: int) -> int:
    """Training processes in this pod: one per GPU used (0 = every visible GPU); one on a CPU-only pod."""
    if gpus_per_node < 0:
        raise TrainError(f"gpus_per_node={gpus_per_node}: use 0 (all GPUs of the pod) or a positive count")
    if gpus_per_node > max(visible_gpus, 1):
        raise TrainError(
            f"gpus_per_node={gpus_per_node} but this pod sees {visible_gpus} GPU(s): set it to 0 (all of "
            "them) or give the train step's profile that many GPUs"
        )
    return max(gpus_per_node or visible_gpus, 1)


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def run_train_step(
    config: TrainConfig,
    num_nodes: int,
    gpus_per_node: int,
    placement: ClusterPlacement | None = None,
    tracker: Tracker = NULL_TRACKER,
) -> TrainResult:
    """The train step on any shape: in this process, torchrun on this node, or a PyTorchJob.

    `gpus_per_node` 0 means every GPU: of this pod, or of the train profile for PyTorchJob pods.
    """
    if num_nodes > 1:
        from components.train import pytorchjob

        if placement is None:
            raise TrainError(f"num_nodes={num_nodes} needs a cluster placement (namespace, image, profile)")
        if not storage.is_s3(config.output):
            raise TrainError(
                f"num_nodes={num_nodes}: output {config.output!r} must be on s3://, where the "
                "job's rank 0 writes and this launcher reads the result"
            )
        gpus = gpus_used(placement.profile, gpus_per_node)
        extra_env = {MLFLOW_RUN_ENV: str(tracker.run_id), "MLFLOW_TRACKING_URI": str(tracker.tracking_uri)}
        try:
            settings = pytorchjob.PyTorchJobSettings(
                # From the output address: the same on a KFP retry, so the retry re-attaches to the job.
                name=pytorchjob.job_name(config.output, "train"),
                namespace=placement.namespace,
                image=placement.image,
                nodes=num_nodes,
                gpus_per_node=gpus,
                profile=placement.profile.model_copy(update={"gpus": gpus}),
                train_config=config.model_dump(mode="json"),
                env_from_secrets=placement.env_from_secrets,
                extra_env=extra_env if tracker.enabled else {},
                labels={pytorchjob.RUN_LABEL: placement.pipeline_run},
                cleanup=placement.cleanup,
            )
        except ValidationError as error:
            # Without the refused values (pydantic's default shows them): some are credentials.
            raise TrainError(f"PyTorchJob settings: {describe_validation_error(error)}") from None
        pytorchjob.launch(settings)
        return read_result(config.output)
    processes = processes_per_node(gpus_per_node, visible_gpu_count())
    if processes > 1:
        return run_torchrun(config, processes, tracker=tracker)
    return train(config, tracker)


def main() -> int:
    """One torchrun worker: the config comes from LLMFT_TRAIN_CONFIG."""
    rank = distributed.rank()
    # Rank 0 tells the story; the other ranks speak up only for warnings and errors.
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s rank {rank} %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if CONFIG_ENV not in os.environ:
        raise SystemExit(f"{CONFIG_ENV} is not set: start workers through run_torchrun")
    # YAML or JSON, as `llmft train --config-env` reads it (JSON is YAML).
    config = TrainConfig.model_validate(yaml.safe_load(os.environ[CONFIG_ENV]))
    run_id = os.environ.get(MLFLOW_RUN_ENV)
    tracker = Tracker(os.environ.get("MLFLOW_TRACKING_URI"), run_id) if run_id else NULL_TRACKER
    result = train(config, tracker)
    if rank == 0:
        print(result.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

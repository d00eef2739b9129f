"""`llmft local`: the real pipeline DAG on this machine, under kfp.local, no cluster, no GPU.

It builds the tiny Llama-architecture base model (nothing is downloaded), then runs
llm_finetune with kfp.local's SubprocessRunner on the sample dataset (or your own), with
local storage, MLflow in a sqlite file of the run directory, and the local rollout
target: a real Triton server on 127.0.0.1 answering a generate request.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import secrets
import sys
import textwrap
import time
import typing
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components import storage, tracking
from components.sample.dataset import SAMPLE_PATH
from components.sample.tiny_model import TinyModelConfig, build_tiny_model
from components.step_io import PIPELINE_RUN_ENV
from pipelines.client import EXIT_USAGE, ClientInputError, check_parameters, parse_overrides

log = logging.getLogger(__name__)

# Settings that let the tiny model learn the sample tasks in about a minute on 2 CPU cores.
LOCAL_PARAMETERS: dict[str, Any] = {
    "epochs": 6.0,
    "learning_rate": 3e-3,
    "micro_batch_size": 8,
    "global_batch_size": 16,
    "max_length": 128,
    "precision": "fp32",
    "max_eval_records": 48,
    "max_new_tokens": 8,
    "gate_min_exact_match_gain": 0.2,
    "rollout_target": "local",
    # The sample's sentiment task: the served model must answer the smoke prompt correctly.
    "smoke_expect": "positive",
}


BASE_MODEL_DIR = "base-model"  # the tiny base model, under the run directory
PIPELINE_STEPS = ("curate", "train", "evaluate", "export", "build", "rollout")


class KfpLogFilter(io.TextIOBase):
    """Keep kfp.local's full log in a file; show the terminal everything but executor boilerplate.

    kfp.local echoes each task's output, including the executor's JSON dump of its inputs
    and its "[KFP Executor ...]" bookkeeping lines: useful when debugging, noise otherwise.
    """

    def __init__(self, terminal: typing.TextIO, log_file: typing.TextIO) -> None:
        self.terminal = terminal
        self.log_file = log_file
        self._pending = ""
        self._in_json_dump = False

    def write(self, text: str) -> int:
        self.log_file.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if self._show(line):
                self.terminal.write(line + "\n")
        return len(text)

    def _show(self, line: str) -> bool:
        body = line.strip()
        if self._in_json_dump:
            # The dump is indented JSON that ends with a closing brace at its first level.
            self._in_json_dump = not (body == "}" and line.startswith("    }"))
            return False
        if "Got executor_input:" in body:
            self._in_json_dump = True
            return False
        return not (body.startswith("[KFP Executor") or "Wrote executor output file" in body)

    def flush(self) -> None:
        self.terminal.flush()
        self.log_file.flush()


@dataclass
class LocalRun:
    workdir: Path
    pipeline_run: str
    outcome: dict[str, Any]
    seconds: float
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return bool(self.outcome.get("succeeded"))


def ensure_base_model(workdir: Path) -> str:
    """Build the tiny base model once per work directory (reused while its manifest is intact)."""
    model_dir = workdir / BASE_MODEL_DIR
    try:
        storage.require_complete(str(model_dir))
        log.info("reusing tiny base model in %s", model_dir)
    except storage.IncompleteDirectoryError:
        log.info("building the tiny Llama base model in %s", model_dir)
        build_tiny_model(TinyModelConfig(output=str(model_dir)))
    return str(model_dir)


def new_run_id() -> str:
    """A run id for a local run: sortable by start time, unique, and valid as a Kubernetes label value."""
    return f"local-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


# Where each output lies, from the summary a step left: (name, step, result field, file inside).
_OUTPUTS: tuple[tuple[str, str, str, str], ...] = (
    ("adapter", "train", "adapter", ""),
    ("evaluation report", "evaluate", "output", "report.html"),
    ("merged checkpoint", "export", "checkpoint", ""),
    ("Triton model repository", "build", "repository", ""),
)


def local_parameters(
    spec: dict[str, Any],
    workdir: Path,
    data: list[str] | None,
    eval_data: str,
    overrides: dict[str, Any] | None,
) -> dict[str, Any]:
    """The local run's pipeline parameters, checked and typed as `submit` does (client.py), before
    anything is built: `--param learning_rate=1e-4` becomes a float, a typo fails here."""
    return check_parameters(
        spec,
        {
            **LOCAL_PARAMETERS,
            "base_model_uri": str(workdir / BASE_MODEL_DIR),
            "train_data_uri": ",".join(str(Path(path).resolve()) for path in (data or [str(SAMPLE_PATH)])),
            "eval_data_uri": str(Path(eval_data).resolve()) if eval_data else "",
            "storage_root": str(workdir / "storage"),
            **(overrides or {}),
        },
    )


def run_local(
    workdir: str | Path = "llmft-run",
    data: list[str] | None = None,
    eval_data: str = "",
    overrides: dict[str, Any] | None = None,
) -> LocalRun:
    """Run the whole pipeline locally and return where everything landed.

    `overrides` are pipeline parameters: text (from `--param`) is converted to the declared
    type; unknown names and values that do not fit raise ClientInputError.
    """
    from kfp import local

    from components.resources import load_profiles
    from pipelines.llm_finetune import build_pipeline

    started = time.perf_counter()
    workdir = Path(workdir).resolve()
    storage_root = workdir / "storage"
    pipeline = build_pipeline(load_profiles(None, preset="cpu"), network_retries=0)
    parameters = local_parameters(pipeline_spec(pipeline), workdir, data, eval_data, overrides)
    storage_root.mkdir(parents=True, exist_ok=True)
    ensure_base_model(workdir)

    # kfp.local warns that cluster settings (resources, display names) and our image names
    # do not apply to subprocess runs: expected here, where the same code runs unpackaged.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(workdir / "kfp"),
        raise_on_error=False,
    )
    log_path = workdir / "local-run.log"
    run_id = new_run_id()
    # The steps' subprocesses inherit this; on a cluster the pod's run-id label sets it.
    previous_run = os.environ.get(PIPELINE_RUN_ENV)
    os.environ[PIPELINE_RUN_ENV] = run_id
    try:
        with (
            open(log_path, "a", encoding="utf-8") as log_file,
            contextlib.redirect_stdout(KfpLogFilter(sys.stdout, log_file)),
        ):
            pipeline(**parameters)
    finally:
        if previous_run is None:
            os.environ.pop(PIPELINE_RUN_ENV, None)
        else:
            os.environ[PIPELINE_RUN_ENV] = previous_run

    run_dir = storage_root / "runs" / run_id
    outcome = (
        json.loads((run_dir / "outcome.json").read_text()) if (run_dir / "outcome.json").exists() else {}
    )
    summaries = {
        step: json.loads(path.read_text())
        for step in PIPELINE_STEPS
        if (path := run_dir / "summaries" / f"{step}.json").exists()
    }
    outputs = {
        name: Path(summaries[step]["result"][field]) / inside
        for name, step, field, inside in _OUTPUTS
        if step in summaries
    }
    outputs.update({"MLflow store": storage_root / "mlflow.db", "full log": log_path})
    return LocalRun(
        workdir=workdir,
        pipeline_run=run_id,
        outcome=outcome,
        seconds=time.perf_counter() - started,
        summaries=summaries,
        outputs={name: str(path) for name, path in outputs.items() if path.exists()},
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="llmft-run", help="run directory (default: ./llmft-run)")
    parser.add_argument(
        "--data",
        action="extend",  # repeatable, like the step commands' list flags
        nargs="+",
        default=None,
        help=f"raw instruction data files (default: the shipped sample, {SAMPLE_PATH.name})",
    )
    parser.add_argument("--eval-data", default="", help="optional held-out evaluation set")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a pipeline parameter, e.g. --param learning_rate=1e-4 (repeatable); "
        "typed by the pipeline's declaration; values that look like credentials are refused. "
        "With --param mlflow_tracking_uri=http(s)://...: " + tracking.WAIT_HELP,
    )


def pipeline_spec(pipeline: Any) -> dict[str, Any]:
    """The PipelineSpec of a pipeline function, as the compiled YAML holds it."""
    from google.protobuf import json_format

    return json_format.MessageToDict(pipeline.pipeline_spec)


def local_command(args: argparse.Namespace) -> int:
    try:
        run = run_local(args.workdir, args.data, args.eval_data, parse_overrides(args.param))
    except ClientInputError as error:
        print(f"llmft local: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print("\n" + "=" * 72)
    print(
        f"llmft local run {run.pipeline_run}: {run.outcome.get('state', 'UNKNOWN')} in {run.seconds:.0f} s\n"
    )
    for step, record in run.summaries.items():
        print(f"[{step}]")
        print(textwrap.indent(record["summary"], "  "))
    if "evaluate" in run.summaries and "export" not in run.summaries:
        print("\nThe gate did not pass: the model was not exported, built or rolled out.")
    print()
    for name, path in run.outputs.items():
        print(f"{name}: {path}")
    if not run.succeeded:
        # KFP names only the exit handler's group; the first step without a summary is the one that failed.
        failed = next((step for step in PIPELINE_STEPS if step not in run.summaries), "?")
        print(f"\nthe {failed} step failed; its error is above and in {run.outputs.get('full log')}")
    return 0 if run.succeeded and "rollout" in run.summaries else 1

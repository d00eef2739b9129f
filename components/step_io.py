"""What every KFP component shares: where a step writes, and how artifacts point at it.

Large outputs never travel through KFP's artifact store: a step writes them straight
to its storage URI (s3://... on a cluster, a directory locally) and the KFP artifact
carries that URI in its metadata plus a small pointer file, so lineage shows in the
KFP UI and the next step reads from the source. This module takes artifact objects by
duck typing (`.path`, `.metadata`) so step logic stays free of KFP imports.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from components import jsonout, redact, storage, tracking

ResultT = TypeVar("ResultT", bound=BaseModel)
ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ArtifactLike(Protocol):
    path: str
    metadata: dict[str, Any]


# The KFP run id reaches a step through the environment (pipelines/cluster.py `expose_run_id` sets it
# from the pod's `pipeline/runid` label; `llmft local` sets it itself), never as a task input: an
# input that changes every run would change KFP's cache key every run.
PIPELINE_RUN_ENV = "LLMFT_PIPELINE_RUN"
# Hex digits of the sha256 in an output address: 64 bits, no collisions among one root's outputs.
ADDRESS_HEX_DIGITS = 16


def pipeline_run_id() -> str:
    """The id of the pipeline run this step belongs to, from LLMFT_PIPELINE_RUN."""
    run_id = os.environ.get(PIPELINE_RUN_ENV, "").strip()
    if not run_id:
        raise ValueError(
            f"{PIPELINE_RUN_ENV} is not set: in a KFP task it comes from the pod's pipeline/runid label "
            "(pipelines/cluster.py expose_run_id); outside a pipeline set it to an id that names the run"
        )
    return run_id


def output_address(
    storage_root: str,
    step: str,
    settings: Mapping[str, Any],
    input_digests: Mapping[str, str] | None = None,
) -> str:
    """`<storage_root>/<step>/<sha256 of the settings and input digests, 16 hex>`: equal inputs, equal place.

    A rerun with the same settings and inputs rewrites the same directory (its manifest goes last,
    so readers never see a half-written one), and KFP's cache can hand the old artifact on.
    """
    if not storage_root:
        raise ValueError("storage_root is empty: set it to an s3://bucket/prefix or a local directory")
    key = {"settings": dict(settings), "inputs": dict(sorted((input_digests or {}).items()))}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:ADDRESS_HEX_DIGITS]
    return storage.join(storage_root, step, digest)


def addressed_config(
    config_type: type[ConfigT],
    settings: Mapping[str, Any],
    storage_root: str,
    step: str,
    input_digests: Mapping[str, str] | None = None,
    output_field: str = "output",
    not_addressed: frozenset[str] = frozenset(),
) -> ConfigT:
    """`config_type` from `settings`, its `output_field` set to the content address of the rest.

    The address covers the validated config (defaults filled in, so spelling a default out changes
    nothing) and `input_digests` (e.g. the curated dataset's sha256); fields in `not_addressed`
    describe where a result came from (lineage), not what it is, and are left out.
    """
    config = config_type.model_validate({**settings, output_field: storage_root or "unset"})
    addressed = config.model_dump(mode="json", exclude={output_field, *not_addressed})
    uri = output_address(storage_root, step, addressed, input_digests)
    return config.model_copy(update={output_field: uri})


def split_list(text: str) -> list[str]:
    """A comma-separated pipeline parameter as a list, blanks dropped ("a, b," -> ["a", "b"])."""
    return [item.strip() for item in text.split(",") if item.strip()]


def point_artifact(artifact: ArtifactLike, uri: str, metadata: Mapping[str, Any] | None = None) -> None:
    """Record `uri` (and metadata) on a KFP output artifact; its file holds only the pointer."""
    artifact.metadata.update({"uri": uri, **(metadata or {})})
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(
        jsonout.dumps(artifact.metadata, indent=2, sort_keys=True), encoding="utf-8"
    )


def artifact_uri(artifact: ArtifactLike) -> str:
    """The storage URI a KFP input artifact points at."""
    if "uri" in artifact.metadata:
        return str(artifact.metadata["uri"])
    return str(json.loads(Path(artifact.path).read_text(encoding="utf-8"))["uri"])


def copy_report(output_uri: str, artifact: ArtifactLike, name: str = "report.html") -> None:
    """Copy a step's small HTML report into a KFP Output[HTML] so the UI can show it."""
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(storage.read_text(storage.join(output_uri, name)), encoding="utf-8")


def summary_uri(storage_root: str, pipeline_run: str, step: str) -> str:
    """Where a step leaves its result for people and for `llmft local`'s closing recap.

    Per run, unlike the outputs: a summary says what this run did (a cached step writes none).
    """
    return storage.join(storage_root, "runs", pipeline_run, "summaries", f"{step}.json")


def run_component_step(
    step: str,
    function: Callable[..., ResultT],
    config: BaseModel,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    storage_root: str,
) -> tuple[ResultT, str | None]:
    """Run a step inside a KFP task: logs to stdout, an MLflow run, a summary kept with the run."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    # KFP keeps pod logs: URIs in them (MLflow's, S3 presigned ones) lose their credentials.
    redact.install_log_redaction()
    pipeline_run = pipeline_run_id()
    uri = tracking.resolve_tracking_uri(mlflow_tracking_uri, storage_root)
    result, mlflow_run_id = tracking.run_step(step, function, config, uri, mlflow_experiment, pipeline_run)
    summary = result.summary()
    print(f"\n== {step} ==\n{summary}\n", flush=True)
    record = {
        "step": step,
        "summary": summary,
        "result": result.model_dump(mode="json"),
        "mlflow_run_id": mlflow_run_id,
    }
    storage.write_text(summary_uri(storage_root, pipeline_run, step), jsonout.dumps(record, indent=2))
    return result, mlflow_run_id

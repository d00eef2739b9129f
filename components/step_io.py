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
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from components import storage, tracking

ResultT = TypeVar("ResultT", bound=BaseModel)


class ArtifactLike(Protocol):
    path: str
    metadata: dict[str, Any]


def run_output_uri(storage_root: str, run_id: str, step: str) -> str:
    """Where one step of one pipeline run writes: <storage_root>/runs/<run_id>/<step>."""
    if not storage_root:
        raise ValueError("storage_root is empty: set it to an s3://bucket/prefix or a local directory")
    return storage.join(storage_root, "runs", run_id, step)


def content_output_uri(storage_root: str, step: str, settings: Mapping[str, Any]) -> str:
    """A location derived from a step's settings, so a cached KFP task and a rerun agree.

    Used by curate, whose output depends only on its inputs and settings: reruns with the
    same settings rewrite the same directory (its manifest goes last, so readers never see
    a half-written one) and KFP's cache can hand the old artifact to the next run.
    """
    if not storage_root:
        raise ValueError("storage_root is empty: set it to an s3://bucket/prefix or a local directory")
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return storage.join(storage_root, step, digest)


def point_artifact(artifact: ArtifactLike, uri: str, metadata: Mapping[str, Any] | None = None) -> None:
    """Record `uri` (and metadata) on a KFP output artifact; its file holds only the pointer."""
    artifact.metadata.update({"uri": uri, **(metadata or {})})
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps(artifact.metadata, indent=2, sort_keys=True), encoding="utf-8")


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
    """Where a step leaves its result for people and for `llmft local`'s closing recap."""
    return storage.join(storage_root, "runs", pipeline_run, "summaries", f"{step}.json")


def run_component_step(
    step: str,
    function: Callable[..., ResultT],
    config: BaseModel,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run: str,
    storage_root: str,
) -> tuple[ResultT, str | None]:
    """Run a step inside a KFP task: logs to stdout, an MLflow run, a summary kept with the run."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
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
    storage.write_text(summary_uri(storage_root, pipeline_run, step), json.dumps(record, indent=2))
    return result, mlflow_run_id

"""No step writes its output over one of its inputs (issue 13, item 4).

`llmft export --output <the base model's path>` used to overwrite the base model. Every step now
calls `storage.check_apart` first (plain Python, not only the CLI), so an output that is, contains
or lies inside an input is refused before anything is read or written, and the input is untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from components import storage
from components.storage import OverlappingPathsError

ROOT = Path(__file__).resolve().parents[2]


def _model_dir(path: Path) -> Path:
    """Something that looks like a model and must survive: every byte is compared afterwards."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}\n')
    (path / "model.safetensors").write_bytes(b"\0" * 64)
    return path


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- the rule itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "source", "relation"),
    [
        ("s3://b/models/base", "s3://b/models/base", "is the same place as"),
        ("s3://b/models/base/", "s3://b/models/base", "is the same place as"),
        ("s3://b/models/base/merged", "s3://b/models/base", "lies inside"),
        ("s3://b/models", "s3://b/models/base", "contains"),
        ("s3://b", "s3://b/models/base", "contains"),
        ("s3://b//models//base", "s3://b/models/base", "is the same place as"),
    ],
)
def test_s3_overlap_is_refused(output: str, source: str, relation: str) -> None:
    with pytest.raises(OverlappingPathsError, match=relation) as error:
        storage.check_apart({"output": output}, {"base_model": source})
    assert f"output {output}" in str(error.value) and f"base_model {source}" in str(error.value)


@pytest.mark.parametrize(
    ("output", "source"),
    [
        ("s3://b/models/base-v2", "s3://b/models/base"),  # a shared name prefix is not a shared place
        ("s3://b/models/bas", "s3://b/models/base"),
        ("s3://other/models/base", "s3://b/models/base"),
        ("s3://b/models/base", "hf://org/base"),  # a Hub id is only read
        ("/models/base", "s3://models/base"),
        ("s3://b/out", None),
    ],
)
def test_apart_places_pass(output: str, source: str | None) -> None:
    storage.check_apart({"output": output}, {"base_model": source})


def test_local_overlap_sees_through_symlinks_and_dots(tmp_path: Path) -> None:
    base = _model_dir(tmp_path / "base")
    (tmp_path / "link").symlink_to(base)
    for output, relation in [
        (tmp_path / "link", "is the same place as"),
        (tmp_path / "link" / "merged", "lies inside"),
        (tmp_path / "x" / ".." / "base", "is the same place as"),
        (tmp_path, "contains"),
    ]:
        with pytest.raises(OverlappingPathsError, match=relation):
            storage.check_apart({"output": str(output)}, {"base_model": str(base)})
    storage.check_apart({"output": str(tmp_path / "base-merged")}, {"base_model": str(base)})


# --- every step refuses before it touches anything ----------------------------------------------


def _curate(tmp: Path) -> Callable[[], object]:
    from components.curate.curate import CurateConfig, curate

    raw = tmp / "data" / "raw.jsonl"
    raw.parent.mkdir()
    raw.write_text('{"input": "a", "output": "b"}\n')
    return lambda: curate(CurateConfig(inputs=[str(raw)], output=str(tmp / "data")))


def _train(tmp: Path) -> Callable[[], object]:
    from components.train.train import TrainConfig, train

    base = _model_dir(tmp / "base")
    return lambda: train(
        TrainConfig(
            base_model=str(base),
            data=str(tmp / "data"),
            output=str(tmp / "run"),
            checkpoint_uri=str(base / "checkpoints"),
        )
    )


def _evaluate(tmp: Path) -> Callable[[], object]:
    from components.evaluate.evaluate import EvaluateConfig, evaluate

    _model_dir(tmp / "run" / "adapter")
    return lambda: evaluate(
        EvaluateConfig(
            base_model=str(tmp / "base"),
            adapter=str(tmp / "run" / "adapter"),
            data=str(tmp / "d"),
            output=str(tmp / "run"),
        )
    )


def _export(tmp: Path) -> Callable[[], object]:
    from components.export.export import ExportConfig, export

    base = _model_dir(tmp / "base")
    return lambda: export(ExportConfig(base_model=str(base), adapter=str(tmp / "adapter"), output=str(base)))


def _build(tmp: Path) -> Callable[[], object]:
    from components.build.build import BuildConfig, build

    model = _model_dir(tmp / "merged")
    return lambda: build(BuildConfig(model=str(model), output=str(model / "repository")))


def _rollout(tmp: Path) -> Callable[[], object]:
    from components.rollout.rollout import RolloutConfig, rollout

    repository = _model_dir(tmp / "repository")
    return lambda: rollout(RolloutConfig(repository=str(repository), workdir=str(repository)))


@pytest.mark.parametrize(
    ("step", "fields"),
    [
        (_curate, "output .* contains inputs\\[0\\]"),
        (_train, "checkpoint_uri .* lies inside base_model"),
        (_evaluate, "output .* contains adapter"),
        (_export, "output .* is the same place as base_model"),
        (_build, "output .* lies inside model"),
        (_rollout, "workdir .* is the same place as repository"),
    ],
    ids=["curate", "train", "evaluate", "export", "build", "rollout"],
)
def test_every_step_refuses_an_output_over_its_input(
    tmp_path: Path, step: Callable[[Path], Callable[[], object]], fields: str
) -> None:
    run = step(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(OverlappingPathsError, match=fields):
        run()
    assert _snapshot(tmp_path) == before, "the step changed files before refusing"


def test_cli_export_over_the_base_model_is_one_line_and_the_model_survives(tmp_path: Path) -> None:
    base = _model_dir(tmp_path / "base")
    before = _snapshot(base)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    flags = ["--base-model", str(base), "--adapter", str(tmp_path / "adapter"), "--output", f"{base}/"]
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "export", *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("llmft export: error:")]
    assert len(errors) == 1, result.stderr
    assert f"is the same place as base_model {base}" in errors[0]
    assert _snapshot(base) == before


def test_model_import_refuses_a_destination_inside_its_source(tmp_path: Path) -> None:
    from pipelines.model_import import import_model

    base = _model_dir(tmp_path / "base")
    before = _snapshot(base)
    for destination, relation in [(base / "copy", "lies inside"), (tmp_path, "contains")]:
        with pytest.raises(OverlappingPathsError, match=f"DEST {destination} {relation} SRC {base}"):
            import_model(str(base), str(destination))
    assert _snapshot(base) == before

"""Inputs that are not what they claim to be (issue 13, items 8 and 12's compile part).

A profiles file is typed by hand: `gpus: true` must not compile as 1, `gpus: 64` must not compile
for a node with 8, and every error names the file and the step's field in one line, with the same
exit code from `python compile.py` and `llmft compile`. A curated dataset is not a model, and a
global batch smaller than (or not a multiple of) the micro batch is not what would train.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from components.build.build import BuildConfig, build
from components.curate.curate import CurateConfig, curate
from components.model_source import ModelSourceError
from components.resources import ProfileConfigError, load_profiles, preset_profiles
from components.sample.dataset import SAMPLE_PATH
from components.train.train import TrainConfig
from pipelines.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]

# (case, preset, file text, what the one-line error must contain after "<file>: ")
BAD_PROFILES = [
    (
        "bool-gpus",
        "p5",
        "train:\n  gpus: true\n",
        "train.gpus: must be a whole number, e.g. 8; got the boolean true",
    ),
    (
        "bool-efa",
        "p5",
        "train:\n  efa: false\n",
        "train.efa: must be a whole number, e.g. 8; got the boolean false",
    ),
    (
        "string-gpus",
        "p5",
        'train:\n  gpus: "4"\n',
        "train.gpus: must be a whole number, e.g. 8; got the string '4'",
    ),
    (
        "float-gpus",
        "p5",
        "train:\n  gpus: 4.0\n",
        "train.gpus: must be a whole number, e.g. 8; got the number 4.0",
    ),
    ("fraction-gpus", "p5", "train:\n  gpus: 2.5\n", "train.gpus: must be a whole number"),
    (
        "null-gpus",
        "p5",
        "evaluate:\n  gpus: null\n",
        "evaluate.gpus: must be a whole number, e.g. 8; got null",
    ),
    ("list-gpus", "p5", "train:\n  gpus: [8]\n", "train.gpus: must be a whole number, e.g. 8; got a list"),
    ("negative-gpus", "p5", "train:\n  gpus: -1\n", "train.gpus: Input should be greater than or equal to 0"),
    ("negative-efa", "p5", "train:\n  efa: -3\n", "train.efa: Input should be greater than or equal to 0"),
    (
        "gpus-beyond-p5",
        "p5",
        "train:\n  gpus: 64\n  efa: 9999\n",
        "train.gpus: 64 GPUs per pod, but a p5.48xlarge node has 8; "
        "train.efa: 9999 EFA interfaces per pod, but a p5.48xlarge node has 32",
    ),
    (
        "efa-beyond-p4d",
        "p4d",
        "train:\n  efa: 5\n",
        "train.efa: 5 EFA interfaces per pod, but a p4d.24xlarge node has 4",
    ),
    (
        "gpus-beyond-p4de",
        "p4de",
        "build:\n  gpus: 9\n",
        "build.gpus: 9 GPUs per pod, but a p4de.24xlarge node has 8",
    ),
    (
        "gpus-on-cpu-preset",
        "cpu",
        "train:\n  gpus: 1\n",
        "train.gpus: 1 GPUs per pod, but a node of the cpu preset",
    ),
    (
        "efa-on-cpu-preset",
        "cpu",
        "train:\n  efa: 1\n",
        "train.efa: 1 EFA interfaces per pod, but a node of the cpu",
    ),
    (
        "preset-efa-on-a-smaller-node",
        "p5",
        "train:\n  node_selector: {node.kubernetes.io/instance-type: p4d.24xlarge}\n",
        "train.efa (preset p5): 32 EFA interfaces per pod, but a p4d.24xlarge node has 4",
    ),
    (
        "bool-toleration-seconds",
        "p5",
        "train:\n  tolerations: [{key: a, toleration_seconds: true}]\n",
        "train.tolerations[0].toleration_seconds: must be a whole number",
    ),
    (
        "string-secret-optional",
        "p5",
        "train:\n  secret_env: [{name: HF_TOKEN, secret: hf, key: t, optional: 'yes'}]\n",
        "train.secret_env[0].optional: Input should be a valid boolean",
    ),
    ("unknown-step", "p5", "trian:\n  gpus: 1\n", "unknown step 'trian'; steps are curate, train"),
    ("unknown-field", "p5", "train:\n  gpu: 1\n", "unknown field train.gpu; fields are"),
    (
        "memory-without-unit",
        "p5",
        "train:\n  memory_limit: 64\n",
        "train.memory_limit: memory needs a unit, e.g. 64Gi",
    ),
    (
        "memory-decimal-unit",
        "p5",
        "train:\n  memory_limit: 64GB\n",
        "train.memory_limit: invalid memory quantity '64GB'",
    ),
    (
        "memory-beyond-int64",
        "p5",
        "train:\n  memory_limit: 99999999999999999999Ei\n",
        "train.memory_limit: memory quantity '99999999999999999999Ei' is larger than Kubernetes can",
    ),
    (
        "zero-memory-limit",
        "p5",
        "rollout:\n  memory_limit: '0'\n  memory_request: '0'\n",
        "rollout: memory_limit is 0",
    ),
    ("zero-shm", "p5", "train:\n  shm_size: 0Gi\n", "train: shm_size is 0: set a size, or null for none"),
    ("zero-cpu-limit", "p5", "curate:\n  cpu_limit: 0\n  cpu_request: 0\n", "curate: cpu_limit is 0"),
    ("negative-shm", "p5", "train:\n  shm_size: -1Gi\n", "train.shm_size: invalid memory quantity '-1Gi'"),
    ("bad-cpu", "p5", "train:\n  cpu_request: eight\n", "train.cpu_request: invalid CPU quantity 'eight'"),
    (
        "bad-toleration",
        "p5",
        "train:\n  tolerations: [{key: a, operator: Maybe}]\n",
        "train.tolerations[0].operator: Input should be 'Equal' or 'Exists'",
    ),
    ("step-not-a-mapping", "p5", "train: 5\n", "train: must be a mapping of fields, got the number 5"),
    ("file-is-a-list", "p5", "- train\n- evaluate\n", "expected a mapping of step names, got a list"),
    (
        "file-is-a-string",
        "p5",
        "just words\n",
        "expected a mapping of step names, got the string 'just words'",
    ),
    ("yaml-syntax", "p5", "train: [gpus: 1\n", "line 2, column 1: not valid YAML: expected ',' or ']'"),
    ("tab-indent", "p5", "train:\n\tgpus: 1\n", "not valid YAML"),
    (
        "duplicate-step",
        "p5",
        "train:\n  gpus: 1\ntrain:\n  gpus: 2\n",
        "line 3, column 1: not valid YAML: the key 'train' is given twice",
    ),
    (
        "duplicate-field",
        "p5",
        "train:\n  gpus: 1\n  gpus: 2\n",
        "not valid YAML: the key 'gpus' is given twice",
    ),
    (
        "recursive-alias",
        "p5",
        "train: &a\n  gpus: *a\n",
        "not valid YAML: found unconstructable recursive node",
    ),
]


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "profiles.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("case", "preset", "text", "fragment"), BAD_PROFILES, ids=[c[0] for c in BAD_PROFILES]
)
def test_bad_profile_is_one_error_naming_file_and_field(
    tmp_path: Path, case: str, preset: str, text: str, fragment: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ProfileConfigError) as error:
        load_profiles(path, preset=preset)
    message = str(error.value)
    assert message.startswith(f"{path}: "), message
    assert fragment in message, message
    assert "\n" not in message


def test_an_all_value_is_reported_once_not_per_step(tmp_path: Path) -> None:
    path = _write(tmp_path, "all:\n  gpus: 9\n")
    with pytest.raises(ProfileConfigError) as error:
        load_profiles(path)
    assert str(error.value) == f"{path}: all.gpus: 9 GPUs per pod, but a p5.48xlarge node has 8"


def test_what_a_node_has_is_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  gpus: 8\n  efa: 32\n  cpu_request: 8\nevaluate:\n  gpus: 8\n")
    profiles = load_profiles(path)
    assert profiles.train.gpus == 8 and profiles.train.efa == 32 and profiles.evaluate.gpus == 8
    # Kubernetes reads `cpu: 8` as 8 cores; so does a profile.
    assert profiles.train.cpu_request == "8"
    assert load_profiles(_write(tmp_path, "train:\n  efa: 4\n"), preset="p4d").train.efa == 4


def test_an_instance_type_without_figures_is_not_checked(tmp_path: Path) -> None:
    """A node pool of another type (say a newer one) has its own capacity: nothing to compare with."""
    text = "train:\n  gpus: 16\n  node_selector: {node.kubernetes.io/instance-type: future.96xlarge}\n"
    assert load_profiles(_write(tmp_path, text)).train.gpus == 16


def test_empty_file_is_the_preset_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert load_profiles(_write(tmp_path, ""), preset="p4d") == preset_profiles("p4d")
    assert "holds no overrides: the p4d preset is used as it is" in caplog.text


@pytest.mark.parametrize("kind", ["missing", "directory", "binary"])
def test_unreadable_profiles_file_names_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "profiles.yaml"
    expected = {
        "missing": "cannot read resource profiles file: No such file or directory",
        "directory": "cannot read resource profiles file: it is a directory",
        "binary": "not a text file (byte 0 is not UTF-8): expected YAML",
    }[kind]
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00train")
    with pytest.raises(ProfileConfigError) as error:
        load_profiles(path)
    assert str(error.value) == f"{path}: {expected}"


# --- both compile entry points: one line, exit 2, nothing written ----------------------------------------

ENTRY_CASES = [
    "bool-gpus",
    "gpus-beyond-p5",
    "unknown-step",
    "yaml-syntax",
    "duplicate-step",
    "file-is-a-list",
]


def _compile_py(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Run compile.py as `python compile.py` does, in this process (a subprocess per case is slow)."""
    monkeypatch.setattr(sys, "argv", ["compile.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO_ROOT / "compile.py"), run_name="__main__")
    return int(exit_.value.code)


def _llmft_compile(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    try:
        return main(["compile", *argv])
    except SystemExit as exit_:  # argparse's usage errors
        return int(exit_.code)


@pytest.mark.parametrize("entry", [_compile_py, _llmft_compile], ids=["compile.py", "llmft-compile"])
@pytest.mark.parametrize("case", [*ENTRY_CASES, "missing", "directory", "binary"])
def test_compile_entry_points_print_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], entry, case: str
) -> None:
    path = tmp_path / "profiles.yaml"
    if case == "directory":
        path.mkdir()
    elif case == "binary":
        path.write_bytes(b"\xff\xfe")
    elif case != "missing":
        path.write_text(next(text for name, _, text, _ in BAD_PROFILES if name == case), encoding="utf-8")
    output = tmp_path / "out" / "pipeline.yaml"
    assert entry(["--profiles", str(path), "--output", str(output)], monkeypatch) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), err
    assert "Traceback" not in err
    assert not output.parent.exists()


@pytest.mark.parametrize("entry", [_compile_py, _llmft_compile], ids=["compile.py", "llmft-compile"])
def test_unknown_preset_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], entry
) -> None:
    assert entry(["--preset", "p6", "--output", str(tmp_path / "x.yaml")], monkeypatch) == 2
    assert "argument --preset: invalid choice: 'p6'" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_compile_py_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  gpus: true\n")
    result = subprocess.run(
        [sys.executable, "compile.py", "--profiles", str(path), "--output", str(tmp_path / "p.yaml")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {path}: train.gpus: must be a whole number, e.g. 8; got the boolean true"
    )
    assert not (tmp_path / "p.yaml").exists()


# --- a dataset is not a model; a batch must be whole micro batches ---------------------------------------


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory) -> str:
    output = tmp_path_factory.mktemp("hostile-build") / "curated"
    curate(CurateConfig(inputs=[str(SAMPLE_PATH)], output=str(output)))
    return str(output)


def test_build_refuses_a_curated_dataset_as_model(curated: str, tmp_path: Path) -> None:
    output = tmp_path / "repository"
    with pytest.raises(ModelSourceError) as error:
        build(BuildConfig(model=curated, output=str(output)))
    assert str(error.value) == f"not a Hugging Face checkpoint: no config.json in {curated}"
    assert not output.exists()


def test_llmft_build_with_a_dataset_is_one_line(
    curated: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "repository"
    assert main(["build", "--model", curated, "--output", str(output)]) != 0
    err = capsys.readouterr().err
    assert f"not a Hugging Face checkpoint: no config.json in {curated}" in err
    assert "Traceback" not in err and not output.exists()


@pytest.mark.parametrize(
    ("global_batch", "micro_batch", "examples"), [(3, 4, "4"), (10, 4, "8 or 12"), (1, 2, "2")]
)
def test_global_batch_must_be_whole_micro_batches(global_batch: int, micro_batch: int, examples: str) -> None:
    with pytest.raises(ValidationError) as error:
        TrainConfig(
            base_model="m", data="d", output="o", global_batch_size=global_batch, micro_batch_size=micro_batch
        )
    message = str(error.value)
    assert (
        "global_batch_size" in message
        and "--micro-batch-size" in message
        and "--global-batch-size" in message
    )
    assert f"e.g. {examples}" in message


@pytest.mark.parametrize(("global_batch", "micro_batch"), [(4, 4), (64, 4), (6, 3), (8, 1)])
def test_whole_micro_batches_are_accepted(global_batch: int, micro_batch: int) -> None:
    config = TrainConfig(
        base_model="m", data="d", output="o", global_batch_size=global_batch, micro_batch_size=micro_batch
    )
    assert config.global_batch_size == global_batch


def test_llmft_train_names_both_flags_and_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    argv = ["train", "--base-model", "m", "--data", "d", "--output", str(output)]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--global-batch-size", "3", "--micro-batch-size", "4"])
    message = str(exit_.value.code)
    assert message.startswith("llmft: invalid settings: --global-batch-size: ")
    assert "--micro-batch-size" in message and "e.g. 4" in message
    assert not output.exists()

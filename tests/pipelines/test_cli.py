"""`llmft` step subcommands: flags from the typed configs, clear errors, the same functions as KFP."""

from __future__ import annotations

import json

import pytest

from components.sample.dataset import SAMPLE_PATH
from pipelines.cli import build_parser, load_step_config, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in [
        "local",
        "compile",
        "submit",
        "schedule",
        "curate",
        "train",
        "evaluate",
        "export",
        "build",
        "rollout",
    ]:
        assert command in out


def test_step_flags_come_from_config_descriptions(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--lora-r" in out and "LoRA rank" in out
    assert "--learning-rate" in out and "default: 0.0002" in out


def test_curate_command_runs_the_step(tmp_path, capsys):
    exit_code = main(
        [
            "curate",
            "--inputs",
            str(SAMPLE_PATH),
            "--output",
            str(tmp_path / "out"),
            "--mlflow-tracking-uri",
            "disabled",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert exit_code == 0
    assert "kept" in out and "malformed_json=1" in out
    result = json.loads(out[out.index("{") :])
    assert result["train_records"] > 400
    assert (tmp_path / "out" / "train.jsonl").is_file()


def test_list_flags_repeat_and_curate_takes_input_and_eval(tmp_path, capsys):
    first, second, held_out = (tmp_path / name for name in ("a.jsonl", "b.jsonl", "eval.jsonl"))
    first.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": "d"}\n')
    second.write_text('{"input": "e", "output": "f"}\n')
    held_out.write_text('{"input": "x", "output": "y"}\n')
    common = ["--mlflow-tracking-uri", "disabled", "--json"]
    for spelling in (
        ["--input", str(first), "--input", str(second), "--eval", str(held_out)],
        ["--inputs", str(first), "--inputs", str(second), "--eval-set", str(held_out)],
    ):
        out_dir = tmp_path / spelling[0].strip("-")
        assert main(["curate", *spelling, "--output", str(out_dir), *common]) == 0
        out = capsys.readouterr().out
        result = json.loads(out[out.index("{") :])
        assert (result["input_records"], result["eval_records"], result["train_records"]) == (3, 1, 3)
    local = build_parser(None).parse_args(["local", "--data", "a.jsonl", "--data", "b.jsonl", "c.jsonl"])
    assert local.data == ["a.jsonl", "b.jsonl", "c.jsonl"]


def test_config_file_and_flags_merge_with_flags_winning(tmp_path):
    from components.train.train import TrainConfig

    config_file = tmp_path / "train.yaml"
    config_file.write_text("base_model: m\ndata: d\noutput: o\nlora:\n  r: 4\n  alpha: 8\nepochs: 1\n")
    config = load_step_config(TrainConfig, str(config_file), {"lora.r": 32, "learning_rate": 1e-3})
    assert (config.lora.r, config.lora.alpha, config.epochs, config.learning_rate) == (32, 8, 1, 1e-3)


def test_invalid_settings_name_the_field(tmp_path):
    from components.train.train import TrainConfig

    with pytest.raises(SystemExit, match=r"--lora-r: Input should be greater than or equal to 1"):
        load_step_config(TrainConfig, None, {"base_model": "m", "data": "d", "output": "o", "lora.r": 0})


def test_version_prints_the_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"llmft {version('llmft')}"


def test_errors_name_the_flag_as_typed_and_never_the_value(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["curate", "--input", "a.jsonl", "--input", " ", "--output", str(tmp_path / "o")])
    assert str(exit_info.value.code).startswith("llmft: invalid settings: --input: ")
    assert "inputs contains an empty path" in str(exit_info.value.code)
    secret = "s3cr3t-t0ken-value"
    for spelling in ("--learning-rate", "--learning-r"):  # argparse takes unambiguous prefixes too
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--base-model", "m", "--data", "d", "--output", "o", spelling, secret])
        message = str(exit_info.value.code)
        assert message.startswith(f"llmft: invalid settings: {spelling}: Input should be a valid number")
        assert secret not in message and secret not in capsys.readouterr().err


def test_errors_name_the_config_file_key_or_the_missing_flag(tmp_path):
    config_file = tmp_path / "train.yaml"
    config_file.write_text("data: d\noutput: o\nlora:\n  r: 0\nwarmup_ratios: 0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(config_file)])
    message = str(exit_info.value.code)
    assert f"lora.r in --config {config_file}: Input should be greater than or equal to 1" in message
    assert f"warmup_ratios in --config {config_file}: Extra inputs are not permitted" in message
    assert "--base-model (or base_model in a --config file): Field required" in message


def test_step_errors_exit_non_zero_with_the_reason(tmp_path, capsys):
    exit_code = main(
        [
            "curate",
            "--inputs",
            str(tmp_path / "missing.jsonl"),
            "--output",
            str(tmp_path / "o"),
            "--mlflow-tracking-uri",
            "disabled",
        ]
    )
    err = capsys.readouterr().err
    assert exit_code == 1
    assert "missing.jsonl" in err and "Traceback" not in err


def test_backend_that_cannot_run_here_is_refused(tmp_path, capsys):
    exit_code = main(
        [
            "train",
            "--base-model",
            str(tmp_path / "base"),
            "--data",
            str(tmp_path / "data"),
            "--output",
            str(tmp_path / "o"),
            "--backend",
            "nemo",
            "--mlflow-tracking-uri",
            "disabled",
        ]
    )
    assert exit_code == 1
    assert "backend='nemo' needs NVIDIA NeMo AutoModel" in capsys.readouterr().err


def test_train_pytorchjob_dry_run_prints_the_job(capsys):
    import yaml

    exit_code = main(
        [
            "train",
            "--base-model",
            "s3://b/base",
            "--data",
            "s3://b/curated",
            "--output",
            "s3://b/out",
            "--launcher",
            "pytorchjob",
            "--dry-run",
            "--nodes",
            "3",
            "--namespace",
            "team",
            "--secret-env",
            "HF_TOKEN=hf:token",
            "--lora-r",
            "8",
        ]
    )
    job = yaml.safe_load(capsys.readouterr().out)
    assert exit_code == 0
    assert job["kind"] == "PyTorchJob" and job["metadata"]["namespace"] == "team"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert json.loads(env["LLMFT_TRAIN_CONFIG"]["value"])["lora"]["r"] == 8


def test_every_step_help_renders(capsys) -> None:
    """Descriptions become argparse help, which formats with %: a literal one must not break --help."""
    from pipelines.cli import STEPS, build_parser

    for step in STEPS:
        with pytest.raises(SystemExit) as exit_info:
            build_parser(step).parse_args([step, "--help"])
        assert exit_info.value.code == 0
        assert "--" in capsys.readouterr().out

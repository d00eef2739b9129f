"""Credentials never show up in what llmft prints, logs or stores in plain text.

A password in a URL is redacted wherever the product prints or logs the URL; a refused value is
never echoed back in an error; names and values that look like credentials are refused where
they would land in plain text (PyTorchJob env, train config, KFP run parameters), with a message
naming the key and where credentials go instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from components.redact import credential_in_value, describe_validation_error, redact
from components.train.pytorchjob import looks_like_secret
from pipelines.cli import main

PASSWORD = "hunter2-Sekret"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
HF_TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz012345"
GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJrZnAtdXNlciJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
PACKAGE = str(Path(__file__).resolve().parents[2] / "dist" / "llm_finetune.yaml")
# The package's required parameters, so that only the credential is at fault.
REQUIRED = [
    *("--param", "base_model_uri=s3://b/base", "--param", "storage_root=s3://b/root"),
    *("--param", "train_data_uri=s3://b/raw"),
]


@pytest.fixture(autouse=True)
def _no_kfp_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KFP_HOST", "KFP_TOKEN", "KFP_NAMESPACE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"http://alice:{PASSWORD}@mlflow:5000", "http://alice:***@mlflow:5000"),
        (
            f"see https://alice:{PASSWORD}@kfp.example.com/pipeline now",
            "see https://alice:***@kfp.example.com/pipeline now",
        ),
        ("postgresql://db:p@ss@word@pg:5432/mlflow", "postgresql://db:***@pg:5432/mlflow"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA/x&X-Amz-Signature=abc123&v=1",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&v=1",
        ),
        (
            "https://h/p?access_token=abc&sig=def&api_key=ghi",
            "https://h/p?access_token=***&sig=***&api_key=***",
        ),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
        (f"key {AWS_KEY_ID} and {HF_TOKEN} and {GITHUB_TOKEN}", "key *** and *** and ***"),
        (f"token {JWT}", "token ***"),
        (f"pem {PEM} end", "pem *** end"),
        ("input_value={'AWS_SECRET_ACCESS_KEY': 'x'}, input_type=dict", "input_value=***, input_type=dict"),
    ],
)
def test_redact_hides_credentials(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "http://mlflow.mlflow.svc:5000",
        "s3://bucket/prefix/model?versionId=3",
        "https://h/p?monkey=1&page=2",
        "sha1 0123456789abcdef0123456789abcdef01234567",
        "meta-llama/Llama-3.1-8B-Instruct",
        "user@host.example.com",
    ],
)
def test_redact_leaves_other_text_alone(text: str) -> None:
    assert redact(text) == text


def test_log_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI redacts every log record, a library's and a traceback too."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        from components.redact import install_log_redaction

        install_log_redaction()
        logging.getLogger("some.library").warning("GET https://u:%s@h/x failed", PASSWORD)
    finally:
        root.removeHandler(handler)
    err = capsys.readouterr().err
    assert "https://u:***@h/x" in err and PASSWORD not in err


# --------------------------------------------------------------------------- refused values not echoed


def test_validation_errors_never_echo_the_value() -> None:
    class Settings(BaseModel):
        retries: int

    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({"retries": {"AWS_SECRET_ACCESS_KEY": AWS_SECRET}})
    tail = AWS_SECRET[-12:]
    assert tail in str(caught.value)  # pydantic's own rendering shows (most of) it
    text = describe_validation_error(caught.value)
    assert text.startswith("retries: ") and tail not in text and "input_value" not in text


def test_step_config_error_does_not_echo_a_secret(tmp_path: Path) -> None:
    config = tmp_path / "curate.yaml"
    config.write_text(f"inputs: [a.jsonl]\noutput: out\nmin_response_chars: {{token: '{HF_TOKEN}'}}\n")
    with pytest.raises(SystemExit) as caught:
        main(["curate", "--config", str(config), "--mlflow-tracking-uri", "disabled"])
    message = str(caught.value.code)
    assert f"min_response_chars in --config {config}" in message
    assert HF_TOKEN not in message and "input_value" not in message


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}", "AWS_SECRET_ACCESS_KEY"),
        (f"AWS_SECRETACCESSKEY={AWS_SECRET}", "AWS_SECRETACCESSKEY"),
        (f"DB_PASS={PASSWORD}", "DB_PASS"),
        (f"PASSWD={PASSWORD}", "PASSWD"),
        (f"PRIVATE_KEY={PASSWORD}", "PRIVATE_KEY"),
        ("STRIPE_KEY=sk9f8e7d6c5b4a3210ZZ", "STRIPE_KEY"),
        (f"SOME_SETTING={AWS_KEY_ID}", "SOME_SETTING"),
        (f"SOME_SETTING={HF_TOKEN}", "SOME_SETTING"),
        (f"SOME_SETTING={GITHUB_TOKEN}", "SOME_SETTING"),
        (f"SOME_SETTING={JWT}", "SOME_SETTING"),
        (f"MLFLOW_TRACKING_URI=https://alice:{PASSWORD}@mlflow", "MLFLOW_TRACKING_URI"),
    ],
)
def test_pytorchjob_env_refuses_credentials_without_echoing_them(
    env: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--base-model", "s3://b/base", "--data", "s3://b/cur", "--output", "s3://b/out"]
    exit_code = main([*args, "--launcher", "pytorchjob", "--dry-run", "--env", env])
    captured = capsys.readouterr()
    assert exit_code == 1
    assert f"extra_env.{named}" in captured.err and "secret_env" in captured.err
    value = env.split("=", 1)[1]
    assert value not in captured.err + captured.out and "input_value" not in captured.err
    assert "Traceback" not in captured.err


def test_train_config_with_a_pem_key_is_refused() -> None:
    from components.train.pytorchjob import _secret_problems

    problems = list(_secret_problems({"lora": {"note": PEM}, "db_pass": "x"}, "train_config"))
    assert problems == [
        "train_config.lora.note holds what looks like a PEM private key",
        "train_config.db_pass looks like a credential",
    ]


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("DB_PASS", None, True),
        ("AWS_SECRETACCESSKEY", None, True),
        ("PASSWD", None, True),
        ("PWD", None, True),
        ("PRIVATE_KEY", None, True),
        ("CLIENT_SECRET", None, True),
        ("LICENSE_KEY", "a1b2c3d4e5f6a7b8c9d0", True),
        ("SORT_KEY", "name", False),
        ("NCCL_SOCKET_IFNAME", "eth0", False),
        ("max_new_tokens", None, False),
        ("PASSTHROUGH", None, False),
        ("ANYTHING", AWS_KEY_ID, True),
        ("ANYTHING", "http://mlflow:5000", False),
    ],
)
def test_looks_like_secret_by_name_and_value(name: str, value: str | None, secret: bool) -> None:
    assert looks_like_secret(name, value) is secret


@pytest.mark.parametrize("value", [AWS_SECRET, AWS_KEY_ID, HF_TOKEN, GITHUB_TOKEN, JWT, PEM, "s3://k:v@b"])
def test_credential_values_are_recognised(value: str) -> None:
    assert credential_in_value(value)


@pytest.mark.parametrize(
    "value",
    ["/data/Train2024/out", "0123456789abcdef0123456789abcdef01234567", "http://m:5000", "1e-4", "cpu"],
)
def test_ordinary_values_are_not_credentials(value: str) -> None:
    assert credential_in_value(value) is None


# --------------------------------------------------------------------------- run parameters


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("mlflow_tracking_uri", f"https://alice:{PASSWORD}@mlflow.example.com"),
        ("base_model_uri", f"https://b.s3.amazonaws.com/m?X-Amz-Signature={PASSWORD}"),
        ("train_data_uri", AWS_KEY_ID),
        ("mlflow_experiment", HF_TOKEN),
        ("registered_model_name", AWS_SECRET),
    ],
)
@pytest.mark.parametrize("command", ["submit", "schedule", "local"])
def test_parameters_refuse_credentials(
    command: str, param: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A host nobody listens on: the refusal comes before any request.
    extra = {
        "submit": ["--host", "http://127.0.0.1:9", "--package", PACKAGE, *REQUIRED],
        "schedule": [
            "--host",
            "http://127.0.0.1:9",
            "--package",
            PACKAGE,
            "--name",
            "n",
            "--cron",
            "0 0 2 * * *",
            *REQUIRED,
        ],
        "local": ["--workdir", str(tmp_path / "run")],
    }[command]
    exit_code = main([command, *extra, "--param", f"{param}={value}"])
    captured = capsys.readouterr()
    assert exit_code == 2
    assert f"parameter {param!r}" in captured.err
    assert "secret_env" in captured.err and "MLFLOW_TRACKING_PASSWORD" in captured.err
    assert value not in captured.err + captured.out and PASSWORD not in captured.err + captured.out
    assert not (tmp_path / "run").exists()  # local built nothing


def test_params_file_refuses_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"mlflow_tracking_uri: 'http://bob:{PASSWORD}@mlflow:5000'\n")
    exit_code = main(
        ["submit", "--host", "http://127.0.0.1:9", "--package", PACKAGE, "--params-file", str(params)]
    )
    err = capsys.readouterr().err
    assert exit_code == 2 and "'mlflow_tracking_uri'" in err and PASSWORD not in err


def test_kfp_host_password_is_not_printed(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with caplog.at_level(logging.INFO):
        exit_code = main(
            ["submit", "--host", f"http://alice:{PASSWORD}@127.0.0.1:{port}", "--package", PACKAGE, *REQUIRED]
        )
    err = capsys.readouterr().err
    assert exit_code == 1
    assert f"http://alice:***@127.0.0.1:{port}" in err
    assert PASSWORD not in err and PASSWORD not in caplog.text


def test_mlflow_uri_password_is_not_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tmp_path / "raw.jsonl"
    data.write_text('{"input": "a", "output": "b"}\n')
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{port}"
    exit_code = main(
        ["curate", "--input", str(data), "--output", str(tmp_path / "out"), "--mlflow-tracking-uri", uri]
    )
    err = capsys.readouterr().err
    assert exit_code == 1
    assert f"http://alice:***@127.0.0.1:{port}" in err and PASSWORD not in err
    assert not (tmp_path / "out").exists()  # failed before any work

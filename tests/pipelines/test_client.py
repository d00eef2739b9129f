"""`llmft submit` / `llmft schedule` against a fake KFP REST API on loopback.

The real kfp.Client talks HTTP to tests/pipelines/fake_kfp.py, which records every request,
so these tests check what KFP would receive: the pipeline spec, typed parameters, the
experiment, service account, 6-field cron, max concurrency and no_catchup.
"""

# No `from __future__ import annotations`: kfp reads the component annotations as real types.
import argparse
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kfp_server_api
import pytest
import yaml
from kfp import compiler, dsl
from kfp.client import Client

from pipelines import client as kc

try:  # plain test directory (rootdir-relative import) or a package with __init__.py files
    from fake_kfp import FakeKfp
except ImportError:  # pragma: no cover - depends on how tests/ is laid out
    from tests.pipelines.fake_kfp import FakeKfp

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-token-value"


@dsl.component(base_image="python:3.11-slim")
def _echo(text: str, epochs: int, learning_rate: float, dry_run: bool, tag: str) -> str:
    return f"{text} {epochs} {learning_rate} {dry_run} {tag}"


@dsl.pipeline(name="tiny-pipeline")
def _tiny(text: str, epochs: int = 1, learning_rate: float = 0.001, dry_run: bool = False, tag: str = "dev"):
    _echo(text=text, epochs=epochs, learning_rate=learning_rate, dry_run=dry_run, tag=tag)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("pkg") / "tiny.yaml"
    compiler.Compiler().compile(_tiny, str(path))
    return str(path)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # kfp.Client reads (and in multi-user mode writes) ~/.config/kfp/context.json.
    monkeypatch.setattr(Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in (
        "KFP_HOST",
        "KFP_NAMESPACE",
        "KFP_TOKEN",
        "KFP_EXPERIMENT",
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_UI_ENDPOINT",
        "KF_PIPELINES_SA_TOKEN_PATH",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeKfp]:
    with FakeKfp() as server:
        yield server


def _cli(add: Callable[[argparse.ArgumentParser], None], command: Callable[[argparse.Namespace], int]):
    def run(*argv: str) -> int:
        parser = argparse.ArgumentParser()
        add(parser)
        return command(parser.parse_args(list(argv)))

    return run


submit = _cli(kc.add_submit_arguments, kc.submit_command)
schedule = _cli(kc.add_schedule_arguments, kc.schedule_command)


def _write_yaml(path: Path, data: Any) -> str:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------- parameters


def test_params_file_then_flags_typed_by_declaration(package: str, tmp_path: Path) -> None:
    params_file = _write_yaml(tmp_path / "p.yaml", {"text": "hello", "epochs": 3, "tag": "v1"})
    params = kc.load_parameters(
        package, params_file, ["epochs=5", "learning_rate=1e-4", "dry_run=true", "tag=1.10"]
    )
    assert params == {"text": "hello", "epochs": 5, "learning_rate": 1e-4, "dry_run": True, "tag": "1.10"}
    # 1e-4 is a string to YAML 1.1 and 1.10 a float; the declared types decide instead.
    assert type(params["epochs"]) is int and type(params["learning_rate"]) is float
    assert params["tag"] == "1.10"


def test_unknown_parameter_is_rejected_with_valid_names(package: str) -> None:
    with pytest.raises(kc.ClientInputError) as err:
        kc.load_parameters(package, None, ["text=x", "epoch=5"])
    message = str(err.value)
    assert "epoch" in message
    for name in ("text", "epochs", "learning_rate", "dry_run", "tag"):
        assert name in message


@pytest.mark.parametrize(
    ("overrides", "file_values", "fragment"),
    [
        ([], {}, "missing required pipeline parameter(s): text"),
        (["text=x", "epochs=five"], {}, "'epochs' takes an integer"),
        (["text=x", "dry_run=maybe"], {}, "'dry_run' takes true or false"),
        (["text=x"], {"tag": 1.1}, "quote it"),
        (["novalue"], {}, "expected KEY=VALUE"),
    ],
)
def test_bad_parameters(
    package: str, tmp_path: Path, overrides: list[str], file_values: dict[str, Any], fragment: str
) -> None:
    params_file = _write_yaml(tmp_path / "p.yaml", file_values) if file_values else None
    with pytest.raises(kc.ClientInputError) as err:
        kc.load_parameters(package, params_file, overrides)
    assert fragment in str(err.value)


def test_cron_needs_six_fields() -> None:
    assert kc.validate_cron("0 0 2 * * *") == "0 0 2 * * *"
    assert kc.validate_cron(" 0  30 1 * * 1-5 ") == "0 30 1 * * 1-5"
    assert kc.validate_cron("@daily") == "@daily"
    with pytest.raises(kc.ClientInputError) as err:
        kc.validate_cron("0 2 * * *")
    assert str(err.value) == "cron '0 2 * * *' has 5 fields; KFP needs 6 (seconds first), e.g. '0 0 2 * * *'"
    for bad in ("0 0 0 2 * * *", "", "@sometimes"):
        with pytest.raises(kc.ClientInputError):
            kc.validate_cron(bad)


# --------------------------------------------------------------------------- submit


def test_submit_sends_spec_params_experiment_and_service_account(
    fake: FakeKfp, package: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params_file = _write_yaml(tmp_path / "p.yaml", {"text": "hello", "epochs": 3})
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    rc = submit(
        "--host", fake.url, "--token-file", str(token_file), "--package", package,
        "--params-file", params_file, "--param", "epochs=5", "--param", "learning_rate=2e-5",
        "--experiment", "nightly-exp", "--run-name", "smoke", "--service-account", "pipeline-runner",
    )  # fmt: skip
    out = capsys.readouterr()
    assert rc == kc.EXIT_OK, out.err

    (exp_req,) = fake.find("POST", "/apis/v2beta1/experiments")
    assert exp_req.body["display_name"] == "nightly-exp"
    (run_req,) = fake.find("POST", "/apis/v2beta1/runs")
    body = run_req.body
    assert body["experiment_id"] == next(iter(fake.experiments))
    assert body["display_name"] == "smoke"
    assert body["service_account"] == "pipeline-runner"
    assert body["runtime_config"]["parameters"] == {"text": "hello", "epochs": 5, "learning_rate": 2e-5}
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "tiny-pipeline"
    assert body["pipeline_spec"]["root"] == kc.read_pipeline_spec(package)["root"]

    assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in fake.requests)
    assert SECRET not in out.out + out.err
    run_id = next(iter(fake.runs))
    assert f"url: {fake.url}/#/runs/details/{run_id}" in out.out


def test_submit_unknown_parameter_exits_2_before_any_request(
    fake: FakeKfp, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = submit("--host", fake.url, "--package", package, "--param", "text=x", "--param", "epoch=5")
    err = capsys.readouterr().err
    assert rc == kc.EXIT_USAGE
    assert "unknown pipeline parameter(s): epoch" in err and "learning_rate" in err
    assert fake.requests == []


@pytest.mark.parametrize(
    ("script", "expected_rc", "state"),
    [
        (["RUNNING", "RUNNING", "SUCCEEDED"], kc.EXIT_OK, "SUCCEEDED"),
        (["RUNNING", "FAILED"], kc.EXIT_RUN_FAILED, "FAILED"),
        (["RUNNING", "CANCELED"], kc.EXIT_RUN_FAILED, "CANCELED"),
    ],
)
def test_submit_wait_exit_code_follows_final_state(
    fake: FakeKfp,
    package: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    script: list[str],
    expected_rc: int,
    state: str,
) -> None:
    fake.run_script = script
    fake.run_error = "task train failed: CUDA out of memory"
    monkeypatch.setenv("KFP_HOST", fake.url)
    monkeypatch.setenv("KFP_TOKEN", SECRET)
    rc = submit("--package", package, "--param", "text=x", "--wait", "--poll-interval", "0.02")
    out = capsys.readouterr()
    assert rc == expected_rc
    final = out.out.rstrip().splitlines()[-4:]  # the last block: run, state, [error], url
    assert f"state: {state}" in final
    assert final[-1].startswith("url: ") and "/#/runs/details/" in final[-1]
    if state == "FAILED":
        assert "error: task train failed: CUDA out of memory" in final
    assert len(fake.find("GET", r"/apis/v2beta1/runs/[^/]+")) >= len(script)
    assert SECRET not in out.out + out.err


def test_submit_wait_timeout_is_bounded(
    fake: FakeKfp, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.run_script = ["RUNNING"]
    start = time.monotonic()
    rc = submit(
        "--host", fake.url, "--package", package, "--param", "text=x",
        "--wait", "--wait-timeout", "0.3", "--poll-interval", "0.05",
    )  # fmt: skip
    elapsed = time.monotonic() - start
    out = capsys.readouterr()
    assert rc == kc.EXIT_WAIT_TIMEOUT
    assert elapsed < 5
    assert "still RUNNING after 0.3s" in out.err
    assert "state: RUNNING" in out.out


def test_wait_for_run_returns_terminal_state(fake: FakeKfp, package: str) -> None:
    client = kc.connect(fake.url, None, None, False)
    info = kc.submit_run(client, package, {"text": "x"}, "exp", None, None)
    assert info.name.startswith("tiny-pipeline ")
    fake.run_get_failures = 2  # polled through: a restarting API server is not a failed run
    done = kc.wait_for_run(client, info.run_id, timeout_s=5, poll_s=0.01)
    assert done.succeeded and done.done and done.run_id == info.run_id
    assert len(fake.find("GET", f"/apis/v2beta1/runs/{info.run_id}")) == 2 + len(fake.run_script)
    with pytest.raises(kfp_server_api.ApiException) as err:  # a 404 is not transient
        kc.wait_for_run(client, "run-missing", timeout_s=5, poll_s=0.01)
    assert err.value.status == 404


# --------------------------------------------------------------------------- connection


def test_connect_in_cluster_sends_projected_token(
    fake: FakeKfp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_path = tmp_path / "sa-token"
    token_path.write_text("projected-token")
    monkeypatch.setenv(kc.SA_TOKEN_PATH_ENV, str(token_path))
    client = kc.connect(fake.url, "team-a", None, True)
    client.list_experiments()
    assert fake.requests and fake.requests[-1].headers["authorization"] == "Bearer projected-token"
    # A non-default namespace is the user's profile: kfp scopes experiments to it.
    assert fake.requests[-1].param("namespace") == "team-a"


def test_connect_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(kc.ClientInputError, match="no KFP host"):
        kc.connect(None, None, None, False)
    monkeypatch.setenv(kc.SA_TOKEN_PATH_ENV, str(tmp_path / "missing"))
    with pytest.raises(kc.ClientInputError, match="projected pipelines token"):
        kc.connect("http://127.0.0.1:9", None, None, True)
    with pytest.raises(kc.ClientInputError, match="not both"):
        kc.connect("http://127.0.0.1:9", None, "t", True)


def test_unreachable_host_fails_with_a_clear_error(package: str, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert submit("--host", f"http://127.0.0.1:{port}", "--package", package, "--param", "text=x") == 1
    assert f"cannot reach KFP at http://127.0.0.1:{port}" in capsys.readouterr().err


def test_api_errors_are_one_line_with_an_auth_hint() -> None:
    exc = kfp_server_api.ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps({"error_message": "user is not allowed to create runs in team-a"})
    text = kc._describe_api_error(exc)
    assert text.startswith("HTTP 403 Forbidden: user is not allowed") and "--token" in text


# --------------------------------------------------------------------------- schedule


def _schedule_args(fake: FakeKfp, package: str, *extra: str) -> list[str]:
    return [
        "--host", fake.url, "--package", package, "--name", "nightly", "--cron", "0 0 2 * * *",
        "--experiment", "sched", "--param", "text=nightly run", *extra,
    ]  # fmt: skip


def test_schedule_uploads_package_and_creates_recurring_run(
    fake: FakeKfp, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = schedule(
        *_schedule_args(fake, package, "--max-concurrency", "2", "--service-account", "pipeline-runner")
    )
    out = capsys.readouterr()
    assert rc == kc.EXIT_OK, out.err

    (upload,) = fake.find("POST", "/apis/v2beta1/pipelines/upload")
    assert upload.param("name") == "tiny-pipeline"
    assert upload.files["uploadfile"] == Path(package).read_bytes()
    (upload_version,) = fake.find("POST", "/apis/v2beta1/pipelines/upload_version")
    version_name = kc.default_version_name(package, "tiny-pipeline")
    assert upload_version.param("name") == version_name
    pipeline_id = next(iter(fake.pipelines))
    assert upload_version.param("pipelineid") == pipeline_id

    (create,) = fake.find("POST", "/apis/v2beta1/recurringruns")
    body = create.body
    assert body["display_name"] == "nightly"
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert len(body["trigger"]["cron_schedule"]["cron"].split()) == 6
    assert int(body["max_concurrency"]) == 2
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["service_account"] == "pipeline-runner"
    assert body["experiment_id"] == next(iter(fake.experiments))
    version_id = next(v for v, item in fake.versions.items() if item["display_name"] == version_name)
    reference = {"pipeline_id": pipeline_id, "pipeline_version_id": version_id}
    assert body["pipeline_version_reference"] == reference
    assert body["runtime_config"]["parameters"] == {"text": "nightly run"}
    assert "pipeline_spec" not in body  # the run references the uploaded version
    assert "cron: 0 0 2 * * *  enabled: true  max concurrency: 2" in out.out
    assert "/#/recurringrun/details/" in out.out


def test_schedule_same_package_reuses_version_and_refuses_duplicate_name(
    fake: FakeKfp, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert schedule(*_schedule_args(fake, package)) == kc.EXIT_OK
    uploads = len(fake.find("POST", r"/apis/v2beta1/pipelines/upload(_version)?"))
    first_id = next(iter(fake.recurring_runs))

    assert schedule(*_schedule_args(fake, package)) == kc.EXIT_USAGE
    err = capsys.readouterr().err
    assert "recurring run 'nightly' already exists" in err and "--replace" in err
    assert schedule(*_schedule_args(fake, package, "--replace")) == kc.EXIT_OK
    # Same bytes, same content-hash version: nothing uploaded again; the old schedule is gone.
    assert len(fake.find("POST", r"/apis/v2beta1/pipelines/upload(_version)?")) == uploads
    assert list(fake.recurring_runs) != [first_id] and len(fake.recurring_runs) == 1
    assert fake.find("DELETE", f"/apis/v2beta1/recurringruns/{first_id}")


def test_schedule_explicit_version_name_is_not_overwritten(
    fake: FakeKfp, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert schedule(*_schedule_args(fake, package, "--version-name", "v1")) == kc.EXIT_OK
    rc = schedule(*_schedule_args(fake, package, "--version-name", "v1", "--replace"))
    assert rc == kc.EXIT_USAGE
    assert "already has a version 'v1'" in capsys.readouterr().err


def test_schedule_rejects_five_field_cron_before_any_request(
    fake: FakeKfp, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _schedule_args(fake, package)
    args[args.index("0 0 2 * * *")] = "0 2 * * *"
    assert schedule(*args) == kc.EXIT_USAGE
    assert "cron '0 2 * * *' has 5 fields; KFP needs 6 (seconds first), e.g. '0 0 2 * * *'" in (
        capsys.readouterr().err
    )
    assert fake.requests == []


def test_schedule_rejects_out_of_range_concurrency(fake: FakeKfp, package: str) -> None:
    assert schedule(*_schedule_args(fake, package, "--max-concurrency", "11")) == kc.EXIT_USAGE
    assert fake.find("POST", "/apis/v2beta1/recurringruns") == []


def test_schedule_existing_version_disabled_and_checked_against_server_spec(
    fake: FakeKfp, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = kc.connect(fake.url, None, None, False)
    pipeline = client.upload_pipeline(package, pipeline_name="tiny-pipeline")
    fake.requests.clear()
    base = [
        "--host", fake.url, "--existing-version", "--pipeline-name", "tiny-pipeline",
        "--version-name", "tiny-pipeline", "--name", "weekly", "--cron", "0 0 3 * * 0", "--disabled",
        "--param", "text=x",
    ]  # fmt: skip
    assert schedule(*base, "--param", "epochz=7") == kc.EXIT_USAGE
    assert "unknown pipeline parameter(s): epochz" in capsys.readouterr().err
    assert fake.experiments == {} and fake.find("POST", ".*") == []  # refused before any change
    assert schedule(*base, "--param", "epochs=7") == kc.EXIT_OK

    assert fake.find("POST", r"/apis/v2beta1/pipelines/upload(_version)?") == []
    create = fake.find("POST", "/apis/v2beta1/recurringruns")[-1].body
    assert create["mode"] == "DISABLE"
    assert create["pipeline_version_reference"]["pipeline_id"] == pipeline.pipeline_id
    assert create["runtime_config"]["parameters"] == {"text": "x", "epochs": 7}


def test_enable_and_disable_existing_recurring_run(
    fake: FakeKfp, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert schedule(*_schedule_args(fake, package)) == kc.EXIT_OK
    (rr_id,) = fake.recurring_runs
    toggle = ["--host", fake.url, "--experiment", "sched", "--name", "nightly"]
    assert schedule(*toggle, "--disable-existing") == kc.EXIT_OK
    assert fake.find("POST", f"/apis/v2beta1/recurringruns/{rr_id}:disable")
    assert fake.recurring_runs[rr_id]["mode"] == "DISABLE"
    assert "enabled: false" in capsys.readouterr().out
    assert schedule(*toggle, "--enable-existing") == kc.EXIT_OK
    assert fake.recurring_runs[rr_id]["mode"] == "ENABLE"
    assert schedule("--host", fake.url, "--experiment", "sched", "--name", "nope", "--enable-existing") == 2


# --------------------------------------------------------------------------- notebook


def test_example_notebook_is_valid_nbformat4_without_outputs() -> None:
    notebook = json.loads((REPO / "examples" / "submit_from_notebook.ipynb").read_text(encoding="utf-8"))
    assert notebook["nbformat"] == 4 and notebook["cells"]
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)
    source = "".join("".join(cell["source"]) for cell in notebook["cells"])
    needles = ("from pipelines.llm_finetune import llm_finetune", "connect(", "submit_run(", "wait_for_run(")
    for needle in (*needles, "schedule_run("):
        assert needle in source
    for cell in code:  # every code cell at least parses
        compile("".join(cell["source"]), "<cell>", "exec")

"""Submit and schedule the compiled pipeline on a Kubeflow Pipelines (KFP v2) endpoint.

`llmft submit` starts one run; `llmft schedule` creates a recurring run. Both read the
compiled package (`dist/llm_finetune.yaml` by default), check the parameters against the
pipeline's declared inputs before any request is sent, and talk to KFP through
`kfp.Client` (REST API v2beta1). The typed functions below are what the commands call,
and they work the same from a notebook.

Parameters come from `--params-file` (a YAML mapping) and `--param key=value` (repeatable,
wins over the file). Values are converted to the type the pipeline declares, so
`--param learning_rate=1e-4` is a float (PyYAML alone would read it as a string) and a
STRING parameter keeps its text exactly (`--param tag=1.10` stays "1.10").

Credentials: `--token` / `KFP_TOKEN` / `--token-file` send a bearer token; `--in-cluster`
reads the projected service-account token that Kubeflow mounts into pods
(`kfp.client.ServiceAccountTokenVolumeCredentials`). A token is never printed or logged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kfp_server_api
import urllib3
import yaml
from kfp.client import Client, ServiceAccountTokenVolumeCredentials

from components import storage
from components.defaults import DEFAULT_EXPERIMENT
from components.redact import credential_in_value, redact
from components.yaml_errors import describe_yaml_error
from pipelines.kfp_cron import CronError, parse_cron

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "dist/llm_finetune.yaml"
# The KFP *profile* namespace the client talks to, not where llmft's workloads go (the pipeline's
# `namespace` parameter, components.defaults.DEFAULT_NAMESPACE): kfp.Client reads "kubeflow" as
# single-user Kubeflow, the one value that works on every install; multi-user users name their profile.
KFP_SINGLE_USER_NAMESPACE = "kubeflow"
# The KFP API service inside the cluster; KFP itself is installed in `kubeflow` whatever the
# user's profile namespace is, so this does not follow --namespace (kfp.Client's own
# in-cluster default does, which breaks multi-user profiles).
IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
# Where Kubeflow projects the pipelines-audience token into pods (kfp reads the same env var).
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
SA_TOKEN_DEFAULT_PATH = "/var/run/secrets/kubeflow/pipelines/token"

# v2beta1 RuntimeState values that never change again. kfp's own wait_for_run_completion
# misses CANCELED and would wait for a canceled run until its timeout.
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"})
# KFP's API server rejects recurring runs outside this range.
MAX_CONCURRENCY_RANGE = (1, 10)
# KFP list filters take the proto enum number; 1 is EQUALS (same value kfp.Client uses).
_FILTER_EQUALS = 1

# Seconds each KFP API request may wait to connect, and then for an answer. kfp.Client sets no
# timeout at all: a server that accepts the connection and never answers held `llmft submit` forever.
DEFAULT_REQUEST_TIMEOUT_S = 30.0
# KFP's /healthz answering 5xx (the API server is starting) is asked again, this often, this far apart.
HEALTH_ATTEMPTS = 3
HEALTH_RETRY_S = 5.0

EXIT_OK = 0
EXIT_RUN_FAILED = 1  # the run ended in another state than SUCCEEDED, or KFP refused a request
EXIT_USAGE = 2  # bad input found before anything was sent (parameters, cron, files)
EXIT_WAIT_TIMEOUT = 3  # --wait gave up; the run is still going
EXIT_INTERRUPTED = 130


class ClientInputError(ValueError):
    """Invalid user input: bad parameters, cron, package or credentials options."""


class KfpRequestError(RuntimeError):
    """KFP could not be reached or refused a request."""


@dataclass(frozen=True)
class ParameterSpec:
    """One input parameter the compiled pipeline declares (root.inputDefinitions.parameters)."""

    name: str
    type: str  # STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, LIST, STRUCT
    optional: bool
    default: Any = None


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    name: str
    state: str
    url: str
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"


@dataclass(frozen=True)
class ScheduleInfo:
    recurring_run_id: str
    name: str
    cron: str
    enabled: bool
    max_concurrency: int
    experiment_id: str
    pipeline_id: str
    pipeline_version_id: str
    pipeline_name: str
    version_name: str
    url: str


class RunWaitTimeout(TimeoutError):
    """wait_for_run gave up before the run reached a terminal state."""

    def __init__(self, run: RunInfo, timeout_s: float) -> None:
        super().__init__(
            f"run {run.run_id} still {run.state} after {timeout_s:g}s; it keeps running: {run.url}"
        )
        self.run = run


# --------------------------------------------------------------------------- package + parameters


def read_pipeline_spec(package_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The PipelineSpec (first YAML document) of a compiled package.

    Later documents hold the platform spec (kfp-kubernetes settings) and are not needed here.
    """
    path = Path(package_path)
    if path.suffix not in {".yaml", ".yml"}:
        raise ClientInputError(f"package {path} is not a compiled pipeline YAML (.yaml or .yml)")
    if not path.is_file():
        raise ClientInputError(f"package {path} not found; compile it first (python compile.py)")
    with path.open(encoding="utf-8") as f:
        docs = [doc for doc in yaml.safe_load_all(f) if doc is not None]
    if not docs or not isinstance(docs[0], dict) or "root" not in docs[0]:
        raise ClientInputError(f"{path} is not a KFP v2 pipeline spec (no 'root')")
    return docs[0]


def declared_parameters(spec: Mapping[str, Any]) -> dict[str, ParameterSpec]:
    """Input parameters of the pipeline, by name.

    Accepts a PipelineSpec, or the `{"pipeline_spec": ..., "platform_spec": ...}` wrapper
    the KFP API returns for packages that carry a platform spec.
    """
    if "root" not in spec and isinstance(spec.get("pipeline_spec"), Mapping):
        spec = spec["pipeline_spec"]
    raw = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}) or {}
    return {
        name: ParameterSpec(
            name=name,
            type=str(p.get("parameterType", "STRING")),
            # A default value also makes a parameter optional, whatever isOptional says.
            optional=bool(p.get("isOptional", False)) or "defaultValue" in p,
            default=p.get("defaultValue"),
        )
        for name, p in raw.items()
    }


def pipeline_name_of(spec: Mapping[str, Any]) -> str:
    name = spec.get("pipelineInfo", {}).get("name")
    if not name:
        raise ClientInputError("the package has no pipelineInfo.name; pass --pipeline-name")
    return str(name)


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """`key=value` strings to a mapping of raw text (typed later, against the declared types)."""
    result: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ClientInputError(f"--param {item!r}: expected KEY=VALUE")
        result[key] = value
    return result


def read_params_file(params_file: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(params_file)
    problem = storage.local_path_problem(path, "file")
    if problem:
        raise ClientInputError(f"--params-file {path} {problem}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ClientInputError(
            f"--params-file {path}: not a text file (byte {error.start} is not UTF-8): expected YAML"
        ) from None
    except OSError as error:
        raise ClientInputError(f"--params-file {path}: cannot read it: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ClientInputError(f"--params-file {path}: {describe_yaml_error(error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClientInputError(
            f"--params-file {path} must hold a mapping of name: value, not {type(data).__name__}"
        )
    return {str(k): v for k, v in data.items()}


def _yaml_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


# KFP's parameter types as a person reads them.
TYPE_NAMES = {
    "STRING": "a string",
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "LIST": "a list",
    "STRUCT": "a mapping",
}


def _describe(param: ParameterSpec) -> str:
    return f"{param.name} ({TYPE_NAMES.get(param.type, param.type)}{'' if param.optional else ', required'})"


def coerce_value(param: ParameterSpec, value: Any) -> Any:
    """`value` as the JSON type KFP expects for `param`; strings (from --param) are parsed.

    Raises ClientInputError with the parameter name and declared type when it does not fit.
    """

    def bad(why: str = "") -> ClientInputError:
        shown = f"{value!r} ({type(value).__name__})"
        expected = TYPE_NAMES.get(param.type, param.type)
        return ClientInputError(f"parameter {param.name!r} takes {expected}, not {shown}{why}")

    kind = param.type
    if kind == "STRING":
        if isinstance(value, str):
            return value
        # YAML turned the file's text into a number/bool/date; converting back could change it
        # (1.10 -> "1.1", yes -> "True"), so ask for quotes instead of guessing.
        raise bad("; quote it in the params file")
    if kind == "NUMBER_INTEGER":
        parsed = _yaml_scalar(value) if isinstance(value, str) else value
        if isinstance(parsed, bool) or not isinstance(parsed, int):
            raise bad()
        return parsed
    if kind == "NUMBER_DOUBLE":
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # float() reads 1e-4, which YAML 1.1 leaves a string
            except ValueError:
                raise bad() from None
        raise bad()
    if kind == "BOOLEAN":
        parsed = _yaml_scalar(value) if isinstance(value, str) else value
        if not isinstance(parsed, bool):
            raise bad("; use true or false")
        return parsed
    if kind == "LIST":
        parsed = _yaml_scalar(value) if isinstance(value, str) else value
        if not isinstance(parsed, list):
            raise bad("; use a YAML list such as [a, b]")
        return parsed
    if kind == "STRUCT":
        parsed = _yaml_scalar(value) if isinstance(value, str) else value
        if not isinstance(parsed, dict):
            raise bad("; use a YAML mapping such as {key: value}")
        return parsed
    return _yaml_scalar(value) if isinstance(value, str) else value


def check_parameters(spec: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate `params` against the pipeline's declared inputs and convert their types.

    Unknown names and missing required parameters are errors that list the valid names,
    so a typo fails here instead of as a run that ignores it.
    """
    refuse_credentials(params)  # first: nothing below may show or send such a value
    declared = declared_parameters(spec)
    valid = ", ".join(_describe(p) for p in sorted(declared.values(), key=lambda p: p.name))
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ClientInputError(
            f"unknown pipeline parameter(s): {', '.join(unknown)}. Valid parameters: {valid or '(none)'}"
        )
    missing = sorted(name for name, p in declared.items() if not p.optional and name not in params)
    if missing:
        raise ClientInputError(
            f"missing required pipeline parameter(s): {', '.join(missing)}. Valid: {valid}"
        )
    return {name: coerce_value(declared[name], value) for name, value in params.items()}


def refuse_credentials(params: Mapping[str, Any]) -> None:
    """Raise ClientInputError naming the first parameter whose value looks like a credential.

    KFP keeps run parameters in plain text (API, UI, the run's spec), so a password in
    `mlflow_tracking_uri=https://user:pass@...` would be readable by anyone who can list runs.
    The value is never shown.
    """
    for name in sorted(params):
        kind = credential_in_value(params[name])
        if kind:
            raise ClientInputError(
                f"parameter {name!r} holds what looks like {kind}: KFP stores run parameters in plain "
                "text. Pass credentials from a Kubernetes Secret instead: the profile's secret_env "
                "(env vars from Secret keys, e.g. MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "for MLflow, AWS_* for S3), and give the parameter the URL without them"
            )


def merge_parameter_sources(params_file: str | None, overrides: Sequence[str]) -> dict[str, Any]:
    """The params file's mapping, with --param overrides (raw text) on top."""
    merged = read_params_file(params_file) if params_file else {}
    merged.update(parse_overrides(overrides))
    return merged


def load_parameters(package_path: str, params_file: str | None, overrides: list[str]) -> dict[str, Any]:
    """Parameters for a run of `package_path`: file values, overridden by `key=value` flags,
    checked against the package's declared inputs and converted to their declared types."""
    return check_parameters(read_pipeline_spec(package_path), merge_parameter_sources(params_file, overrides))


def validate_cron(cron: str) -> str:
    """Return `cron` normalised, or raise: every field is checked as KFP's scheduler reads it.

    KFP parses cron with robfig/cron, whose default parser reads a 5-field expression as
    `sec min hour day month`: '0 2 * * *' is accepted and runs hourly at :02, not nightly.
    Values, ranges, steps, names and descriptors are checked too (see pipelines/kfp_cron.py).
    """
    try:
        return parse_cron(cron)
    except CronError as error:
        raise ClientInputError(str(error)) from None


def default_version_name(package_path: str | os.PathLike[str], pipeline_name: str) -> str:
    """`<pipeline>-<sha256[:12] of the package>`: scheduling the same package twice reuses the
    version it uploaded the first time instead of failing KFP's duplicate-name check."""
    digest = hashlib.sha256(Path(package_path).read_bytes()).hexdigest()[:12]
    return f"{pipeline_name}-{digest}"


# --------------------------------------------------------------------------- KFP connection


class BoundedClient(Client):
    """kfp.Client whose every API request has a timeout, health check included.

    kfp's generated REST client (kfp_server_api) gives urllib3 a timeout only when a call names
    one (`_request_timeout`, an int or a (connect, read) pair; a float is silently dropped), and
    kfp.Client's methods never do; its constructor's /healthz check retries 5 times, 5 s apart.
    Here the one REST client all of kfp.Client's APIs share gets a default (connect, read)
    timeout, and urllib3 may reconnect once but never re-send a request that got no answer
    (its default repeats a timed-out GET 3 times).
    """

    def __init__(
        self, *args: Any, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, **kwargs: Any
    ) -> None:
        # Set before kfp's constructor runs: it calls get_kfp_healthz (below) itself.
        self._request_timeout_s = request_timeout_s
        super().__init__(*args, **kwargs)
        # Multi-user namespaces skip the constructor's health check, and so the bounding in it.
        _bound_requests(self._run_api.api_client, request_timeout_s)

    def get_kfp_healthz(self, sleep_duration: int = int(HEALTH_RETRY_S)) -> Any:
        """/healthz, asked HEALTH_ATTEMPTS times while it answers 5xx; other failures raise at once."""
        _bound_requests(self._healthz_api.api_client, self._request_timeout_s)
        attempt = 1
        while True:
            try:
                return self._healthz_api.healthz_service_get_healthz()
            except kfp_server_api.ApiException as exc:
                if not exc.status or exc.status < 500 or attempt >= HEALTH_ATTEMPTS:
                    raise
                log.warning(
                    "KFP health check %d of %d: %s", attempt, HEALTH_ATTEMPTS, _describe_api_error(exc)
                )
            time.sleep(sleep_duration)
            attempt += 1


def _bound_requests(api_client: Any, timeout_s: float) -> None:
    """Give every request of `api_client` a (connect, read) timeout unless the call sets one."""
    rest = api_client.rest_client
    if getattr(rest, "_llmft_timeout_s", None) is not None:
        return
    request = rest.request
    bounds = (timeout_s, timeout_s)

    def bounded_request(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return request(*args, _request_timeout=_request_timeout or bounds, **kwargs)

    rest.request = bounded_request
    rest.pool_manager.connection_pool_kw["retries"] = urllib3.Retry(
        total=None, connect=1, read=False, redirect=3, status=0, other=0
    )
    rest.pool_manager.clear()  # pools made before this (none, or the health check's) keep old retries
    rest._llmft_timeout_s = timeout_s


def connect(
    host: str | None,
    namespace: str | None,
    token: str | None,
    in_cluster: bool,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> Client:
    """A kfp.Client for `host` (default env KFP_HOST) whose every request is bounded (BoundedClient).

    `namespace` is the user's profile namespace on multi-user Kubeflow (default env
    KFP_NAMESPACE, then 'kubeflow', which kfp treats as single-user). `token` is sent as a
    bearer token; `in_cluster` reads the projected service-account token instead and
    defaults the host to the in-cluster API service. A request waits at most
    `request_timeout_s` to connect (twice: one reconnect) and as long for an answer.
    """
    if not request_timeout_s > 0:
        raise ClientInputError(f"--request-timeout must be more than 0 seconds, not {request_timeout_s:g}")
    host = host or os.environ.get("KFP_HOST") or None
    namespace = namespace or os.environ.get("KFP_NAMESPACE") or KFP_SINGLE_USER_NAMESPACE
    if token and in_cluster:
        raise ClientInputError("pass either a token or --in-cluster, not both")
    credentials = None
    if in_cluster:
        token_path = os.environ.get(SA_TOKEN_PATH_ENV) or SA_TOKEN_DEFAULT_PATH
        if not Path(token_path).is_file():
            raise ClientInputError(
                f"--in-cluster needs the projected pipelines token at {token_path} (set {SA_TOKEN_PATH_ENV} "
                "to move it); in a Kubeflow notebook, enable the 'Allow access to Kubeflow Pipelines' "
                "configuration"
            )
        credentials = ServiceAccountTokenVolumeCredentials(path=token_path)
        host = host or IN_CLUSTER_HOST
    if not host:
        raise ClientInputError("no KFP host: pass --host or set KFP_HOST (or use --in-cluster inside a pod)")
    shown_host = redact(host)
    log.info(
        "connecting to KFP at %s (namespace %s, auth: %s)",
        shown_host,
        namespace,
        _auth_kind(token, in_cluster),
    )
    try:
        with warnings.catch_warnings():
            # kfp warns on every construction that it needs a v2 backend; that is a given here.
            warnings.simplefilter("ignore", FutureWarning)
            return BoundedClient(
                host=host,
                namespace=namespace,
                existing_token=token or None,
                credentials=credentials,
                request_timeout_s=request_timeout_s,
            )
    except kfp_server_api.ApiException as exc:
        hint = " (a 404: the host is not the KFP API endpoint)" if exc.status == 404 else ""
        raise KfpRequestError(
            f"KFP at {shown_host} failed its health check: {_describe_api_error(exc)}{hint}"
        ) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
        # NewConnectionError (refused, no route) is a ConnectTimeoutError to urllib3: ask it first.
        if isinstance(reason, urllib3.exceptions.ReadTimeoutError):
            why = f"connected, but no answer within {request_timeout_s:g} s (--request-timeout)"
        elif isinstance(reason, urllib3.exceptions.ConnectTimeoutError) and not isinstance(
            reason, urllib3.exceptions.NewConnectionError
        ):
            why = f"no connection within {request_timeout_s:g} s (--request-timeout)"
        else:
            why = _describe_api_error(exc)
        raise KfpRequestError(f"cannot reach KFP at {shown_host}: {why}") from None


def _auth_kind(token: str | None, in_cluster: bool) -> str:
    return "bearer token" if token else "in-cluster service account" if in_cluster else "none"


def _ui_prefix(client: Client) -> str:
    # kfp prints run links built by this method (KF_PIPELINES_UI_ENDPOINT or the host) but has
    # no public accessor; fall back to the API host.
    getter = getattr(client, "_get_url_prefix", None)
    if callable(getter):
        return str(getter()).rstrip("/")
    return str(getattr(getattr(client, "_existing_config", None), "host", "")).rstrip("/")


def run_url(client: Client, run_id: str) -> str:
    return f"{_ui_prefix(client)}/#/runs/details/{run_id}"


def recurring_run_url(client: Client, recurring_run_id: str) -> str:
    return f"{_ui_prefix(client)}/#/recurringrun/details/{recurring_run_id}"


def _describe_api_error(exc: BaseException) -> str:
    """A one-line reason from an ApiException (its body is KFP's JSON error) or a network error."""
    if isinstance(exc, kfp_server_api.ApiException):
        message = ""
        try:
            body = json.loads(exc.body or "{}")
            message = body.get("error_message") or body.get("message") or ""
        except (TypeError, ValueError, AttributeError):
            message = str(exc.body or "")[:300]
        hint = " (check --token / KFP_TOKEN or --in-cluster)" if exc.status in (401, 403) else ""
        return redact(f"HTTP {exc.status} {exc.reason}: {message}{hint}".rstrip(": "))
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason  # "Max retries exceeded with url ..." hides what went wrong
    return redact(f"{type(exc).__name__}: {exc}")


def _name_filter(name: str) -> str:
    return json.dumps(
        {"predicates": [{"operation": _FILTER_EQUALS, "key": "display_name", "stringValue": name}]}
    )


def _run_info(client: Client, run: Any) -> RunInfo:
    error = getattr(run, "error", None)
    message = getattr(error, "message", None) if error is not None else None
    return RunInfo(
        run_id=str(run.run_id),
        name=str(run.display_name or ""),
        state=str(run.state or "PENDING"),
        url=run_url(client, str(run.run_id)),
        error=message or None,
    )


# --------------------------------------------------------------------------- submit


def submit_run(
    client: Client,
    package_path: str,
    params: dict[str, Any],
    experiment: str,
    run_name: str | None,
    service_account: str | None,
) -> RunInfo:
    """Start one run of the compiled package in `experiment` (created when missing)."""
    spec = read_pipeline_spec(package_path)
    params = check_parameters(spec, params)
    run_name = run_name or f"{pipeline_name_of(spec)} {dt.datetime.now(dt.UTC):%Y-%m-%d %H-%M-%S}"
    exp = client.create_experiment(name=experiment)  # get-or-create, in the client's namespace
    log.info("submitting %s as run %r in experiment %r", package_path, run_name, experiment)
    run = client.run_pipeline(
        experiment_id=exp.experiment_id,
        job_name=run_name,
        pipeline_package_path=str(package_path),
        params=params,
        service_account=service_account or None,
    )
    return _run_info(client, run)


def wait_for_run(client: Client, run_id: str, timeout_s: float, poll_s: float) -> RunInfo:
    """Poll the run until it reaches a terminal state; raise RunWaitTimeout after `timeout_s`.

    Transient API trouble (5xx, dropped connections) is logged and polled through until the
    deadline; other errors (404, 401) are raised at once.
    """
    deadline = time.monotonic() + max(0.0, timeout_s)
    poll_s = max(0.01, poll_s)
    last: RunInfo | None = None
    while True:
        # kfp.Client.get_run sets no request timeout; a stalled connection would outlive the
        # deadline, so call the generated API (kfp.Client exposes it as `client.runs`) with one.
        # A (connect, read) pair: kfp_server_api drops a float timeout without a word.
        read_s = min(60.0, max(1.0, deadline - time.monotonic()))
        try:
            run = client.runs.run_service_get_run(run_id=run_id, _request_timeout=(min(10.0, read_s), read_s))
            info = _run_info(client, run)
        except kfp_server_api.ApiException as exc:
            if exc.status is None or exc.status < 500:
                raise
            log.warning("polling run %s: %s", run_id, _describe_api_error(exc))
            info = last
        except urllib3.exceptions.HTTPError as exc:
            log.warning("polling run %s: %s", run_id, _describe_api_error(exc))
            info = last
        if info is not None:
            if last is None or info.state != last.state:
                log.info("run %s: %s", run_id, info.state)
            last = info
            if info.done:
                return info
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RunWaitTimeout(last or RunInfo(run_id, "", "UNKNOWN", run_url(client, run_id)), timeout_s)
        time.sleep(min(poll_s, remaining))


# --------------------------------------------------------------------------- schedule


def _user_namespace(client: Client) -> str | None:
    return client.get_user_namespace() or None


def _find_pipeline_id(client: Client, name: str) -> str | None:
    """The pipeline named `name`: first in the user's namespace, then among shared pipelines."""
    namespaces = [_user_namespace(client)]
    if namespaces[0] is not None:
        namespaces.append(None)
    for namespace in namespaces:
        found = client.list_pipelines(filter=_name_filter(name), namespace=namespace).pipelines or []
        if len(found) > 1:
            raise KfpRequestError(
                f"{len(found)} pipelines are named {name!r}; KFP needs the name to be unique"
            )
        if found:
            return str(found[0].pipeline_id)
    return None


def _find_version(client: Client, pipeline_id: str, version_name: str) -> Any | None:
    versions = client.list_pipeline_versions(pipeline_id=pipeline_id, filter=_name_filter(version_name))
    found = versions.pipeline_versions or []
    return found[0] if found else None


def _find_experiment_id(client: Client, name: str) -> str | None:
    try:
        return str(client.get_experiment(experiment_name=name).experiment_id)
    except ValueError as exc:  # kfp's way of saying "No experiment is found with name ..."
        if str(exc).startswith("No experiment is found"):
            return None
        raise ClientInputError(f"experiment {name!r}: {exc}") from exc


def _find_recurring_runs(client: Client, experiment_id: str, name: str) -> list[Any]:
    found = client.list_recurring_runs(experiment_id=experiment_id, filter=_name_filter(name))
    return list(found.recurring_runs or [])


def ensure_pipeline_version(
    client: Client,
    package_path: str | None,
    pipeline_name: str | None,
    version_name: str | None,
) -> tuple[str, Any, str, str]:
    """Resolve (pipeline_id, version, pipeline_name, version_name) for a recurring run.

    With a package: upload it as pipeline `pipeline_name` (default: the package's name) or as
    a new version `version_name` (default: content hash) of it; an existing version with the
    content-hash name is the same package and is reused. Without a package, the named
    pipeline and version must exist.
    """
    if package_path is None:
        if not pipeline_name or not version_name:
            raise ClientInputError("an existing version needs both --pipeline-name and --version-name")
        pipeline_id = _find_pipeline_id(client, pipeline_name)
        if pipeline_id is None:
            raise ClientInputError(f"pipeline {pipeline_name!r} not found on KFP")
        version = _find_version(client, pipeline_id, version_name)
        if version is None:
            raise ClientInputError(f"pipeline {pipeline_name!r} has no version {version_name!r}")
        return pipeline_id, version, pipeline_name, version_name

    spec = read_pipeline_spec(package_path)
    pipeline_name = pipeline_name or pipeline_name_of(spec)
    content_name = default_version_name(package_path, pipeline_name)
    version_name = version_name or content_name
    namespace = _user_namespace(client)
    pipeline_id = _find_pipeline_id(client, pipeline_name)
    if pipeline_id is None:
        log.info("uploading %s as new pipeline %r", package_path, pipeline_name)
        # KFP's upload also creates a first version named like the pipeline (same content).
        pipeline_id = str(
            client.upload_pipeline(
                str(package_path), pipeline_name=pipeline_name, namespace=namespace
            ).pipeline_id
        )
    version = _find_version(client, pipeline_id, version_name)
    if version is not None:
        if version_name != content_name:
            raise ClientInputError(
                f"pipeline {pipeline_name!r} already has a version {version_name!r}; "
                "pick a new --version-name, or pass --existing-version to schedule that version as it is"
            )
        log.info("reusing version %r of pipeline %r (same package content)", version_name, pipeline_name)
        return pipeline_id, version, pipeline_name, version_name
    log.info("uploading %s as version %r of pipeline %r", package_path, version_name, pipeline_name)
    version = client.upload_pipeline_version(
        str(package_path), pipeline_version_name=version_name, pipeline_id=pipeline_id
    )
    return pipeline_id, version, pipeline_name, version_name


def _schedule_info(client: Client, rr: Any, pipeline_name: str = "", version_name: str = "") -> ScheduleInfo:
    trigger = getattr(rr, "trigger", None)
    cron_schedule = getattr(trigger, "cron_schedule", None)
    ref = getattr(rr, "pipeline_version_reference", None)
    return ScheduleInfo(
        recurring_run_id=str(rr.recurring_run_id),
        name=str(rr.display_name or ""),
        cron=str(getattr(cron_schedule, "cron", "") or ""),
        enabled=str(rr.mode or "").upper() != "DISABLE",
        max_concurrency=int(rr.max_concurrency or 1),
        experiment_id=str(rr.experiment_id or ""),
        pipeline_id=str(getattr(ref, "pipeline_id", "") or ""),
        pipeline_version_id=str(getattr(ref, "pipeline_version_id", "") or ""),
        pipeline_name=pipeline_name,
        version_name=version_name,
        url=recurring_run_url(client, str(rr.recurring_run_id)),
    )


def schedule_run(
    client: Client,
    package_path: str | None,
    params: dict[str, Any],
    experiment: str,
    job_name: str,
    cron: str,
    max_concurrency: int,
    pipeline_name: str | None,
    version_name: str | None,
    service_account: str | None,
    enabled: bool,
    *,
    replace: bool = False,
) -> ScheduleInfo:
    """Create recurring run `job_name` in `experiment` on a pipeline version (see
    ensure_pipeline_version), with a 6-field cron, at most `max_concurrency` runs at once and
    no catch-up of missed intervals (a paused nightly job resumes with one run, not a backlog).

    A recurring run of the same name in the experiment is an error (two nightly schedules would
    double the GPU bill) unless `replace`, which deletes it once the new one exists.
    """
    cron = validate_cron(cron)
    low, high = MAX_CONCURRENCY_RANGE
    if not low <= max_concurrency <= high:
        raise ClientInputError(f"max concurrency {max_concurrency} is out of KFP's range {low}-{high}")
    if not job_name:
        raise ClientInputError("a recurring run needs a name")
    if package_path is not None:
        # Check before uploading anything, so a typo leaves no stray pipeline version behind.
        params = check_parameters(read_pipeline_spec(package_path), params)

    # Read-only checks first, so a refused schedule leaves no experiment or upload behind.
    experiment_id = _find_experiment_id(client, experiment)
    existing = _find_recurring_runs(client, experiment_id, job_name) if experiment_id else []
    if existing and not replace:
        ids = ", ".join(str(r.recurring_run_id) for r in existing)
        raise ClientInputError(
            f"recurring run {job_name!r} already exists in experiment {experiment!r} ({ids}); "
            "pass --replace to swap it for the new one"
        )

    pipeline_id, version, pipeline_name, version_name = ensure_pipeline_version(
        client, package_path, pipeline_name, version_name
    )
    if package_path is None:
        version_spec = getattr(version, "pipeline_spec", None)
        if isinstance(version_spec, Mapping):
            params = check_parameters(version_spec, params)
        elif params:
            raise ClientInputError(
                f"KFP returned no pipeline spec for version {version_name!r}, so parameters cannot be checked"
            )

    if experiment_id is None:
        experiment_id = str(client.create_experiment(name=experiment).experiment_id)
    log.info("creating recurring run %r (%s) on %s/%s", job_name, cron, pipeline_name, version_name)
    rr = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=job_name,
        cron_expression=cron,
        max_concurrency=max_concurrency,
        no_catchup=True,
        params=params,
        pipeline_id=pipeline_id,
        version_id=str(version.pipeline_version_id),
        enabled=enabled,
        service_account=service_account or None,
    )
    for old in existing:
        log.info("deleting replaced recurring run %s", old.recurring_run_id)
        client.delete_recurring_run(str(old.recurring_run_id))
    return _schedule_info(client, rr, pipeline_name, version_name)


def set_schedule_enabled(client: Client, experiment: str, job_name: str, enabled: bool) -> ScheduleInfo:
    """Enable or disable the existing recurring run `job_name` in `experiment`."""
    experiment_id = _find_experiment_id(client, experiment)
    found = _find_recurring_runs(client, experiment_id, job_name) if experiment_id else []
    if not found:
        raise ClientInputError(f"no recurring run named {job_name!r} in experiment {experiment!r}")
    if len(found) > 1:
        raise ClientInputError(f"{len(found)} recurring runs are named {job_name!r}; fix that in the KFP UI")
    rr_id = str(found[0].recurring_run_id)
    if enabled:
        client.enable_recurring_run(rr_id)
    else:
        client.disable_recurring_run(rr_id)
    return _schedule_info(client, client.get_recurring_run(rr_id))


# --------------------------------------------------------------------------- CLI


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("KFP connection")
    group.add_argument(
        "--host", help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline (env KFP_HOST)"
    )
    group.add_argument(
        "--namespace",
        help="profile namespace on multi-user Kubeflow (env KFP_NAMESPACE, default 'kubeflow' = single-user)",
    )
    creds = group.add_mutually_exclusive_group()
    creds.add_argument(
        "--token",
        help="bearer token (env KFP_TOKEN; prefer the env var or --token-file: argv is visible in ps)",
    )
    creds.add_argument("--token-file", help="file holding the bearer token")
    creds.add_argument(
        "--in-cluster",
        action="store_true",
        help=f"use the projected service-account token ({SA_TOKEN_DEFAULT_PATH} or env {SA_TOKEN_PATH_ENV})",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        metavar="SECONDS",
        help="each KFP API request waits at most this long to connect (one reconnect) and as long for "
        "an answer: a KFP endpoint that never answers fails the command within 3x this, "
        f"%(default)g s x 3 = {3 * DEFAULT_REQUEST_TIMEOUT_S:g} s by default",
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline parameter (repeatable; wins over --params-file); typed by the pipeline's declaration",
    )
    parser.add_argument("--params-file", help="YAML mapping of pipeline parameters")
    parser.add_argument(
        "--experiment",
        help=f"KFP experiment, created if missing (env KFP_EXPERIMENT, default {DEFAULT_EXPERIMENT})",
    )
    parser.add_argument("--service-account", help="Kubernetes service account the run's pods use")


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `llmft submit`."""
    _add_connection_arguments(parser)
    parser.add_argument(
        "--package", default=DEFAULT_PACKAGE, help="compiled pipeline YAML (default %(default)s)"
    )
    _add_run_arguments(parser)
    parser.add_argument("--run-name", help="display name of the run (default: pipeline name + UTC time)")
    parser.add_argument(
        "--wait", action="store_true", help="wait for the run to end; exit 0 only if it SUCCEEDED"
    )
    parser.add_argument(
        "--wait-timeout", type=float, default=24 * 3600.0, help="seconds --wait waits (default %(default)g)"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=30.0,
        help="seconds between status checks (default %(default)g)",
    )


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `llmft schedule`."""
    _add_connection_arguments(parser)
    parser.add_argument("--name", required=True, help="display name of the recurring run")
    parser.add_argument(
        "--cron",
        help="6-field cron, seconds first, e.g. '0 0 2 * * *' = 02:00:00 daily (scheduler time, usually UTC)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=1,
        help="runs allowed at the same time, 1-10 (default %(default)s)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--package", help=f"compiled pipeline YAML to upload (default {DEFAULT_PACKAGE})")
    source.add_argument(
        "--existing-version",
        action="store_true",
        help="schedule the already uploaded --pipeline-name/--version-name instead of uploading a package",
    )
    parser.add_argument(
        "--pipeline-name", help="KFP pipeline to upload to or use (default: the package's name)"
    )
    parser.add_argument(
        "--version-name", help="pipeline version (default: <pipeline>-<sha256 of the package, 12 hex>)"
    )
    _add_run_arguments(parser)
    parser.add_argument("--disabled", action="store_true", help="create the recurring run paused")
    parser.add_argument(
        "--replace", action="store_true", help="replace a recurring run of the same name in the experiment"
    )
    toggle = parser.add_mutually_exclusive_group()
    toggle.add_argument(
        "--enable-existing", action="store_true", help="only enable the existing recurring run --name"
    )
    toggle.add_argument(
        "--disable-existing", action="store_true", help="only disable the existing recurring run --name"
    )


def _token_from_args(args: argparse.Namespace) -> str | None:
    if getattr(args, "token_file", None):
        path = Path(args.token_file)
        if not path.is_file():
            raise ClientInputError(f"token file {path} not found")
        return path.read_text(encoding="utf-8").strip() or None
    if getattr(args, "in_cluster", False):
        return None
    return getattr(args, "token", None) or os.environ.get("KFP_TOKEN") or None


def _connect_from_args(args: argparse.Namespace) -> Client:
    return connect(
        args.host, args.namespace, _token_from_args(args), bool(args.in_cluster), args.request_timeout
    )


def _experiment_from_args(args: argparse.Namespace) -> str:
    return args.experiment or os.environ.get("KFP_EXPERIMENT") or DEFAULT_EXPERIMENT


def _fail(message: str, code: int) -> int:
    print(f"error: {redact(message)}", file=sys.stderr)
    return code


def _print_run(info: RunInfo) -> None:
    print(f"run: {info.name} ({info.run_id})")
    print(f"state: {info.state}")
    if info.error:
        print(f"error: {redact(info.error)}")
    print(f"url: {redact(info.url)}")


def submit_command(args: argparse.Namespace) -> int:
    """`llmft submit`; returns the exit code (see EXIT_*)."""
    try:
        params = load_parameters(args.package, args.params_file, list(args.param or []))
        client = _connect_from_args(args)
        info = submit_run(
            client, args.package, params, _experiment_from_args(args), args.run_name, args.service_account
        )
        _print_run(info)
        if not args.wait:
            return EXIT_OK
        try:
            info = wait_for_run(client, info.run_id, args.wait_timeout, args.poll_interval)
        except RunWaitTimeout as exc:
            _print_run(exc.run)
            return _fail(str(exc), EXIT_WAIT_TIMEOUT)
        except KeyboardInterrupt:
            print(f"\nstopped waiting; the run keeps going: {redact(info.url)}", file=sys.stderr)
            return EXIT_INTERRUPTED
        _print_run(info)
        return EXIT_OK if info.succeeded else EXIT_RUN_FAILED
    except ClientInputError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KfpRequestError as exc:
        return _fail(str(exc), EXIT_RUN_FAILED)
    except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError) as exc:
        return _fail(f"KFP request failed: {_describe_api_error(exc)}", EXIT_RUN_FAILED)


def _print_schedule(info: ScheduleInfo) -> None:
    print(f"recurring run: {info.name} ({info.recurring_run_id})")
    print(f"cron: {info.cron}  enabled: {str(info.enabled).lower()}  max concurrency: {info.max_concurrency}")
    if info.pipeline_name or info.version_name:
        print(f"pipeline: {info.pipeline_name}  version: {info.version_name}")
    print(f"url: {redact(info.url)}")


def schedule_command(args: argparse.Namespace) -> int:
    """`llmft schedule`; returns the exit code (see EXIT_*)."""
    try:
        if args.enable_existing or args.disable_existing:
            client = _connect_from_args(args)
            info = set_schedule_enabled(
                client, _experiment_from_args(args), args.name, bool(args.enable_existing)
            )
            _print_schedule(info)
            return EXIT_OK
        if not args.cron:
            raise ClientInputError("--cron is required to create a recurring run")
        cron = validate_cron(args.cron)
        if args.existing_version:
            package = None
            params = merge_parameter_sources(args.params_file, list(args.param or []))
        else:
            package = args.package or DEFAULT_PACKAGE
            params = load_parameters(package, args.params_file, list(args.param or []))
        client = _connect_from_args(args)
        info = schedule_run(
            client,
            package,
            params,
            _experiment_from_args(args),
            args.name,
            cron,
            args.max_concurrency,
            args.pipeline_name,
            args.version_name,
            args.service_account,
            not args.disabled,
            replace=args.replace,
        )
        _print_schedule(info)
        return EXIT_OK
    except ClientInputError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KfpRequestError as exc:
        return _fail(str(exc), EXIT_RUN_FAILED)
    except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError) as exc:
        return _fail(f"KFP request failed: {_describe_api_error(exc)}", EXIT_RUN_FAILED)

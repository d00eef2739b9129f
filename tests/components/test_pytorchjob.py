"""The PyTorchJob launcher: the job it builds, and its lifecycle against an in-memory Kubernetes API.

Schema: the job goes through the kubeflow-training SDK models both ways (nothing dropped), and every
replica's pod template is validated by kubernetes-validate (strict, Kubernetes 1.30) as a Pod and as a
PodTemplate. Lifecycle: kmock serves the Kubernetes API on 127.0.0.1; the launcher runs in a thread with
a real kubernetes client pointed at it, and the test plays the Training Operator by writing the job's
status conditions, the master pod and its log.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest
import pytest_asyncio
import yaml
from kmock import KubernetesError
from kubeflow.training import TrainingClient
from kubernetes.client import Configuration
from pydantic import ValidationError

from components.resources import (
    EFA_RESOURCE,
    GPU_RESOURCE,
    ResourceProfile,
    SecretEnv,
    apply_to_pod_spec,
    preset_profiles,
)
from components.train.pytorchjob import (
    CONFIG_ENV,
    MAX_JOB_NAME,
    TRAIN_COMMAND,
    WORKER_MODULE,
    PyTorchJobError,
    PyTorchJobFailed,
    PyTorchJobSettings,
    PyTorchJobTimeout,
    build_pytorchjob,
    cleanup,
    job_name,
    launch,
    looks_like_secret,
    manifest_yaml,
    to_dict,
)
from components.train.train import TrainConfig
from pipelines.cli import load_step_config

K8S_VERSION = "1.30"  # the Kubernetes version the README states for schema checks
NS = "team-llm"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/llmft-train@sha256:" + "ab" * 32
RUN_ID = "3f1c2b9e-1234-4e5f-9a8b-0123456789ab"
# learning_rate 1e-5 is written as JSON 1e-05, which YAML 1.1 reads as a string: the round trip through
# the CLI's --config-env parser must still give the same float.
TRAIN_CONFIG: dict[str, Any] = {
    "base_model": "s3://models/Llama-3.1-8B",
    "data": "s3://runs/curated",
    "output": "s3://runs/train",
    "learning_rate": 1e-5,
    "lora": {"r": 8, "alpha": 16},
    "max_steps": 100,
}
JOBS = "kubeflow.org/v1/pytorchjobs"
PODS = "v1/pods"


def p5_train(**update: Any) -> ResourceProfile:
    return preset_profiles("p5").train.model_copy(update=update)


def make_settings(**overrides: Any) -> PyTorchJobSettings:
    values: dict[str, Any] = {
        "name": job_name(RUN_ID, "train"),
        "namespace": NS,
        "image": IMAGE,
        "nodes": 4,
        "gpus_per_node": 8,
        "profile": p5_train(
            service_account="llmft-train", image_pull_secrets=["ecr"], priority_class="train"
        ),
        "train_config": TRAIN_CONFIG,
        "secret_env": [SecretEnv(name="HF_TOKEN", secret="hf-credentials", key="token")],
        "env_from_secrets": ["mlflow-auth"],
        "extra_env": {"MLFLOW_TRACKING_URI": "http://mlflow.mlflow.svc:5000"},
    }
    values.update(overrides)
    return PyTorchJobSettings(**values)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


# ---------------------------------------------------------------------------------------------------------
# The job as built
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [1, 4])
def test_job_replicas_resources_and_env(nodes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(nodes=nodes)
    data = to_dict(build_pytorchjob(settings))

    assert (data["apiVersion"], data["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert data["metadata"]["name"] == settings.name and data["metadata"]["namespace"] == NS
    spec = data["spec"]
    assert spec["nprocPerNode"] == "8"  # a string in the v1 CRD
    replicas = spec["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    if nodes == 1:
        assert "Worker" not in replicas
    else:
        assert replicas["Worker"]["replicas"] == nodes - 1
    assert spec["runPolicy"] == {"backoffLimit": 3, "cleanPodPolicy": "Running"}
    assert "elasticPolicy" not in spec

    for replica in replicas.values():
        assert replica["restartPolicy"] == "Never"
        template = replica["template"]
        assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        pod = template["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"  # the operator's webhook requires it
        assert container["image"] == IMAGE
        assert container["command"] == list(TRAIN_COMMAND)
        assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}]
        limits = container["resources"]["limits"]
        assert limits[GPU_RESOURCE] == "8" and limits[EFA_RESOURCE] == "32"
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Gi"}} in pod["volumes"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert {t["key"] for t in pod["tolerations"]} == {GPU_RESOURCE, EFA_RESOURCE}
        assert pod["nodeSelector"] == {
            "node.kubernetes.io/instance-type": "p5.48xlarge",
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        }
        assert pod["serviceAccountName"] == "llmft-train"
        assert pod["imagePullSecrets"] == [{"name": "ecr"}]
        assert pod["priorityClassName"] == "train"

        env = env_of(container)
        assert env["FI_PROVIDER"] == "efa"
        assert env["FI_EFA_USE_DEVICE_RDMA"] == "1"
        assert env["FI_EFA_FORK_SAFE"] == "1"
        assert env["NCCL_DEBUG"] == "WARN"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow.svc:5000"
        assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-credentials", "key": "token"}}
        assert container["envFrom"] == [{"secretRef": {"name": "mlflow-auth"}}]
        assert not {"MASTER_ADDR", "RANK", "WORLD_SIZE"} & set(env)  # the operator sets those

        # Workers read the config from the env var as JSON; `llmft train --config-env` (YAML) reads it too.
        expected = TrainConfig.model_validate(TRAIN_CONFIG)
        assert TrainConfig.model_validate_json(env[CONFIG_ENV]) == expected
        monkeypatch.setenv(CONFIG_ENV, env[CONFIG_ENV])
        assert load_step_config(TrainConfig, None, {}, CONFIG_ENV) == expected

        # The replica's pod passes the Kubernetes schema, strictly (unknown fields are errors).
        kubernetes_validate.validate(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"{settings.name}-master-0"},
                "spec": pod,
            },
            K8S_VERSION,
            strict=True,
        )
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template},
            K8S_VERSION,
            strict=True,
        )


def test_job_round_trips_through_the_sdk_models() -> None:
    """Deserialized into the SDK's KubeflowOrgV1PyTorchJob and back, the job loses nothing."""
    from kubeflow.training.api_client import ApiClient
    from kubeflow.training.utils.utils import FakeResponse

    data = to_dict(build_pytorchjob(make_settings()))
    model = ApiClient().deserialize(FakeResponse(data), "KubeflowOrgV1PyTorchJob")
    assert to_dict(model) == data
    assert model.spec.pytorch_replica_specs["Worker"].template.spec.containers[0].name == "pytorch"


def test_fields_unknown_to_the_models_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from components.train import pytorchjob

    def with_typo(spec: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**apply_to_pod_spec(spec, *args, **kwargs), "nodeSelecter": {"a": "b"}}

    monkeypatch.setattr(pytorchjob, "apply_to_pod_spec", with_typo)
    with pytest.raises(ValueError, match="unknown to the Kubernetes API models"):
        build_pytorchjob(make_settings())


def test_without_efa_no_fabric_env_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    profile = p5_train(efa=0, tolerations=[])
    with caplog.at_level(logging.WARNING, logger="components.train.pytorchjob"):
        data = to_dict(build_pytorchjob(make_settings(profile=profile)))
    container = data["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert not [name for name in env if name.startswith("FI_")]
    assert env["NCCL_DEBUG"] == "WARN"
    assert EFA_RESOURCE not in container["resources"]["limits"]
    assert "without EFA" in caplog.text


def test_extra_env_overrides_the_fabric_defaults() -> None:
    settings = make_settings(extra_env={"NCCL_DEBUG": "INFO", "FI_EFA_USE_HUGE_PAGE": "0"})
    container = to_dict(build_pytorchjob(settings))["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    env = env_of(container["spec"]["containers"][0])
    assert env["NCCL_DEBUG"] == "INFO" and env["FI_EFA_USE_HUGE_PAGE"] == "0"
    assert [item["name"] for item in container["spec"]["containers"][0]["env"]].count("NCCL_DEBUG") == 1


def test_credentials_are_references_never_values(monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = "hf_SENTINEL_VALUE_do_not_print"
    monkeypatch.setenv("HF_TOKEN", sentinel)  # the launcher's own environment must not leak into the job
    text = manifest_yaml(build_pytorchjob(make_settings()))
    assert "secretKeyRef" in text and "hf-credentials" in text and "mlflow-auth" in text
    assert sentinel not in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"train_config": {**TRAIN_CONFIG, "hf_token": "x"}},
            "train_config.hf_token looks like a credential",
        ),
        ({"train_config": {**TRAIN_CONFIG, "aws_access_key_id": "x"}}, "looks like a credential"),
        ({"train_config": {**TRAIN_CONFIG, "lora": {"r": 8, "apiKey": "x"}}}, r"train_config.lora.apiKey"),
        ({"train_config": {**TRAIN_CONFIG, "data": "https://u:pw@example.com/d"}}, "URL with a password"),
        ({"extra_env": {"MLFLOW_TRACKING_PASSWORD": "x"}}, "use secret_env"),
        ({"extra_env": {"AWS_SECRET_ACCESS_KEY": "x"}}, "looks like a credential"),
        ({"extra_env": {"MASTER_ADDR": "x"}}, "reserved"),
        ({"extra_env": {"PET_NNODES": "2"}}, "reserved"),
        ({"secret_env": [SecretEnv(name=CONFIG_ENV, secret="s", key="k")]}, "reserved"),
        ({"profile": p5_train(gpus=4)}, "profile.gpus is 4 but gpus_per_node is 8"),
        ({"image": ""}, "image is empty"),
        ({"image": "repo/img :tag"}, "whitespace"),
        ({"name": "Train_Job"}, "invalid PyTorchJob name"),
        ({"name": "a" * (MAX_JOB_NAME + 1)}, "invalid PyTorchJob name"),
        ({"nodes": 0}, "nodes"),
        ({"train_config": {"data": "d", "output": "o"}}, "base_model"),
    ],
)
def test_settings_refuse_with_a_clear_error(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_settings(**overrides)


def test_missing_image_is_named() -> None:
    values = make_settings().model_dump()
    del values["image"]
    with pytest.raises(ValidationError, match="image"):
        PyTorchJobSettings.model_validate(values)


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("hf_token", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("aws_access_key_id", True),
        ("mlflowTrackingPassword", True),
        ("max_new_tokens", False),
        ("tokenizer", False),
        ("secretive_name", False),
        ("learning_rate", False),
    ],
)
def test_looks_like_secret(key: str, secret: bool) -> None:
    assert looks_like_secret(key) is secret


def test_job_name_is_deterministic_dns_and_short() -> None:
    name = job_name(RUN_ID, "train")
    assert name == job_name(RUN_ID, "train")
    assert name != job_name(RUN_ID, "train-2")
    # Runs whose ids share the part that fits still get different names (the hash covers everything).
    assert job_name("x" * 80 + "1", "train") != job_name("x" * 80 + "2", "train")
    for run in (RUN_ID, "Run With Spaces/And_Caps", "----", "9" * 200):
        candidate = job_name(run, "Train Step")
        assert len(candidate) <= MAX_JOB_NAME
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", candidate), candidate
        assert len(f"{candidate}-worker-99999") <= 63  # pod and Service names the operator derives
    with pytest.raises(ValueError, match="non-empty"):
        job_name("", "train")


def test_manifest_yaml_is_deterministic_and_complete() -> None:
    first = manifest_yaml(build_pytorchjob(make_settings()))
    second = manifest_yaml(build_pytorchjob(make_settings()))
    assert first == second
    assert yaml.safe_load(first) == to_dict(build_pytorchjob(make_settings()))
    assert first.splitlines()[:2] == ["apiVersion: kubeflow.org/v1", "kind: PyTorchJob"]


def test_torchrun_reads_the_operator_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The container command needs no rendezvous flags: torchrun takes them from the PET_* variables."""
    import torch.distributed.run as run  # the test environment always has torch (the train extra)

    name = job_name(RUN_ID, "train")
    # What Training Operator v1 sets on worker index 1 of a 4-node job with nprocPerNode "8".
    operator_env = {
        "PET_NNODES": "4",
        "PET_NPROC_PER_NODE": "8",
        "PET_NODE_RANK": "2",
        "PET_MASTER_ADDR": f"{name}-master-0",
        "PET_MASTER_PORT": "23456",
    }
    for key, value in operator_env.items():
        monkeypatch.setenv(key, value)
    args = run.get_args_parser().parse_args(list(TRAIN_COMMAND[1:]))
    config, _, script_args = run.config_from_args(args)
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (4, 4, 8)
    assert config.rdzv_backend == "static" and config.rdzv_endpoint == f"{name}-master-0:23456"
    assert config.rdzv_configs["rank"] == 2
    assert script_args[-2:] == ["-m", WORKER_MODULE]


def test_worker_module_reads_the_same_variable() -> None:
    """The module the pods run exists and takes its config from the variable the job sets."""
    worker = importlib.import_module(WORKER_MODULE)
    assert worker.CONFIG_ENV == CONFIG_ENV
    assert callable(worker.main)


# ---------------------------------------------------------------------------------------------------------
# Lifecycle against kmock (an in-memory Kubernetes API on 127.0.0.1)
# ---------------------------------------------------------------------------------------------------------


def _stamp(index: int) -> str:
    moment = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=index, microseconds=index)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


@dataclass
class FakeCluster:
    """kmock plus what the Training Operator and kubelet would do, driven by the test."""

    kmock: Any
    client: TrainingClient
    log_lines: list[str] = field(default_factory=list)
    log_error: int | None = None  # answer pods/log with this HTTP status instead
    sink: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def job(self, name: str) -> Any | None:
        try:
            obj = self.kmock.objects[JOBS, NS, name]
        except KeyError:
            return None
        return None if obj.deleted else obj

    def conditions(self, name: str, *states: tuple[str, str, str]) -> None:
        """Write the job's status conditions: (type, reason, message), all True, oldest first."""
        now = "2025-01-01T00:00:00Z"
        conditions = [
            {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": now}
            for t, r, m in states
        ]
        self.kmock.objects[JOBS, NS, name].patch({"status": {"conditions": conditions}})

    def add_pod(self, job: str, role: str, index: int = 0, terminated: dict[str, Any] | None = None) -> None:
        name = f"{job}-{role}-{index}"
        labels = {
            "training.kubeflow.org/job-name": job,
            "training.kubeflow.org/replica-type": role,
            "training.kubeflow.org/replica-index": str(index),
        }
        if role == "master":
            labels["training.kubeflow.org/job-role"] = "master"
        state = (
            {"terminated": terminated} if terminated else {"running": {"startedAt": "2025-01-01T00:00:00Z"}}
        )
        status = {
            "name": "pytorch",
            "image": IMAGE,
            "imageID": "",
            "ready": not terminated,
            "restartCount": 0,
        }
        self.kmock.objects[PODS, NS, name] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "status": {
                "phase": "Failed" if terminated else "Running",
                "containerStatuses": [{**status, "state": state}],
            },
        }

    def write_log(self, count: int, start: int = 0) -> None:
        self.log_lines += [
            f"{_stamp(i)} step {i} loss {10 - i / 10:.1f}" for i in range(start, start + count)
        ]

    def creates(self) -> int:
        return sum(1 for request in self.kmock if request.action == self.kmock.action.CREATE)

    async def until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        for _ in range(int(timeout_s / 0.02)):
            if predicate():
                return
            await asyncio.sleep(0.02)
        raise AssertionError("condition not reached in time")

    async def launch(self, settings: PyTorchJobSettings) -> asyncio.Task[Any]:
        task = asyncio.create_task(asyncio.to_thread(launch, settings, self.client, self.sink.append))
        self.tasks.append(task)
        return task

    async def stop_launchers(self) -> None:
        """End launcher threads a failed test left waiting: their job vanishes, so they raise and return."""
        if all(task.done() for task in self.tasks):
            return
        for key in list(self.kmock.objects):
            if key[0] == JOBS and not self.kmock.objects[key].deleted:
                self.kmock.objects[key].delete()
        await asyncio.wait(self.tasks, timeout=10)


@pytest_asyncio.fixture
async def cluster(kmock: Any) -> AsyncIterator[FakeCluster]:
    kmock.resources[JOBS] = kmock.ResourceInfo(kind="PyTorchJob", namespaced=True)
    kmock.resources[PODS] = kmock.ResourceInfo(kind="Pod", namespaced=True)
    url = str(kmock.url).rstrip("/")
    assert url.startswith("http://127.0.0.1:")  # loopback only
    fake = FakeCluster(kmock=kmock, client=TrainingClient(client_configuration=Configuration(host=url)))

    def pod_log(request: Any) -> bytes:
        if fake.log_error:
            raise KubernetesError(
                status=fake.log_error, reason="InternalError", message="kubelet unreachable"
            )
        # Like the kubelet: tailLines is honoured; sinceSeconds is not (the launcher drops re-read lines).
        tail = int(request.params.get("tailLines", 0))
        return "\n".join(fake.log_lines[-tail:] if tail else fake.log_lines).encode()

    kmock["get", kmock.resource(PODS), kmock.subresource("log")] << pod_log
    try:
        yield fake
    finally:
        await fake.stop_launchers()


def fast(**overrides: Any) -> PyTorchJobSettings:
    return make_settings(**{"poll_s": 0.05, "timeout_s": 20.0, **overrides})


@pytest.mark.asyncio
async def test_launch_creates_streams_logs_succeeds_and_a_retry_reattaches(cluster: FakeCluster) -> None:
    settings = fast()
    name = settings.name
    task = await cluster.launch(settings)
    await cluster.until(lambda: cluster.job(name) is not None)
    created = cluster.job(name)
    assert created >= {"spec": {"nprocPerNode": "8", "pytorchReplicaSpecs": {"Worker": {"replicas": 3}}}}

    cluster.conditions(name, ("Created", "PyTorchJobCreated", "created"))
    cluster.add_pod(name, "master")
    cluster.write_log(3)
    cluster.conditions(name, ("Created", "PyTorchJobCreated", "c"), ("Running", "PyTorchJobRunning", "r"))
    await cluster.until(lambda: len(cluster.sink) >= 3)
    cluster.write_log(2, start=3)  # later reads overlap earlier ones; each line still shows once
    await cluster.until(lambda: len(cluster.sink) >= 5)
    cluster.conditions(
        name, ("Created", "PyTorchJobCreated", "c"), ("Succeeded", "PyTorchJobSucceeded", "done")
    )
    outcome = await asyncio.wait_for(task, timeout=10)

    assert (outcome.name, outcome.namespace, outcome.state, outcome.reattached) == (
        name,
        NS,
        "Succeeded",
        False,
    )
    assert cluster.sink == [f"[master] step {i} loss {10 - i / 10:.1f}" for i in range(5)]

    # A KFP retry of the step: same name, the job is there, so no second job.
    again = await asyncio.wait_for(asyncio.to_thread(launch, settings, cluster.client, lambda line: None), 10)
    assert again.state == "Succeeded" and again.reattached
    assert cluster.creates() == 1
    assert sum(1 for key in cluster.kmock.objects if key[0] == JOBS) == 1


@pytest.mark.asyncio
async def test_retry_reattaches_to_a_running_job(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fast()
    name = settings.name
    # The running job came from an attempt with other settings: followed as it is, with a warning.
    cluster.kmock.objects[JOBS, NS, name] = to_dict(build_pytorchjob(fast(nodes=2)))
    cluster.conditions(name, ("Running", "PyTorchJobRunning", "r"))
    cluster.add_pod(name, "master")
    cluster.write_log(80)
    with caplog.at_level(logging.INFO, logger="components.train.pytorchjob"):
        task = await cluster.launch(settings)
        await cluster.until(lambda: len(cluster.sink) >= 50)
        cluster.conditions(name, ("Succeeded", "PyTorchJobSucceeded", "done"))
        outcome = await asyncio.wait_for(task, timeout=10)
    assert outcome.reattached and outcome.state == "Succeeded"
    assert cluster.creates() == 0
    assert "re-attaching to existing PyTorchJob" in caplog.text
    assert "created from other settings" in caplog.text
    # Re-attaching shows the recent lines for context, not the whole history.
    assert cluster.sink[0] == "[master] step 30 loss 7.0" and len(cluster.sink) == 50


@pytest.mark.asyncio
async def test_failed_job_raises_with_reason_failed_replicas_and_log_tail(cluster: FakeCluster) -> None:
    settings = fast()
    name = settings.name
    task = await cluster.launch(settings)
    await cluster.until(lambda: cluster.job(name) is not None)
    cluster.add_pod(name, "master")
    cluster.add_pod(name, "worker", 1, terminated={"exitCode": 137, "reason": "OOMKilled"})
    cluster.write_log(60)
    cluster.conditions(name, ("Running", "PyTorchJobRunning", "r"))
    await cluster.until(lambda: len(cluster.sink) >= 60)
    message = f"PyTorchJob {name} is failed because 1 Worker replica(s) failed."
    cluster.conditions(name, ("Running", "PyTorchJobRunning", "r"), ("Failed", "PyTorchJobFailed", message))
    with pytest.raises(PyTorchJobFailed) as caught:
        await asyncio.wait_for(task, timeout=10)

    error = caught.value
    assert (error.reason, error.message) == ("PyTorchJobFailed", message)
    assert error.log_tail == [f"step {i} loss {10 - i / 10:.1f}" for i in range(10, 60)]  # the last 50
    text = str(error)
    assert f"{name}-worker-1: container pytorch exited with code 137 (OOMKilled)" in text
    assert "last 50 lines of the master's log" in text and "step 59 loss 4.1" in text
    assert cluster.job(name) is not None  # a failed job is left for the exit handler's policy


@pytest.mark.asyncio
async def test_failure_is_reported_even_when_logs_are_unavailable(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.log_error = 500
    settings = fast()
    name = settings.name
    with caplog.at_level(logging.WARNING, logger="components.train.pytorchjob"):
        task = await cluster.launch(settings)
        await cluster.until(lambda: cluster.job(name) is not None)
        cluster.add_pod(name, "master")
        cluster.conditions(name, ("Running", "PyTorchJobRunning", "r"))
        await cluster.until(lambda: "master logs unavailable" in caplog.text)
        cluster.conditions(name, ("Failed", "PyTorchJobFailed", "backoff limit reached"))
        with pytest.raises(PyTorchJobFailed, match="backoff limit reached") as caught:
            await asyncio.wait_for(task, timeout=10)
    assert caught.value.log_tail == []
    assert "no master log lines could be read" in str(caught.value)


@pytest.mark.asyncio
async def test_timeout_leaves_the_job_running(cluster: FakeCluster) -> None:
    settings = fast(timeout_s=1.0, poll_s=0.1)
    task = await cluster.launch(settings)
    await cluster.until(lambda: cluster.job(settings.name) is not None)
    cluster.conditions(settings.name, ("Running", "PyTorchJobRunning", "r"))
    with pytest.raises(PyTorchJobTimeout, match="still Running after 1 s") as caught:
        await asyncio.wait_for(task, timeout=10)
    assert "re-attaches" in str(caught.value)
    assert cluster.job(settings.name) is not None


@pytest.mark.asyncio
async def test_earlier_failure_is_reported_again_or_rerun(cluster: FakeCluster) -> None:
    settings = fast()
    name = settings.name
    cluster.kmock.objects[JOBS, NS, name] = to_dict(build_pytorchjob(settings))
    cluster.conditions(name, ("Failed", "PyTorchJobFailed", "first attempt failed"))

    # Default: a retried step reports the failure without starting the job again.
    with pytest.raises(PyTorchJobFailed, match="first attempt failed"):
        await asyncio.wait_for(asyncio.to_thread(launch, settings, cluster.client, cluster.sink.append), 10)
    assert cluster.creates() == 0

    # rerun_failed: the failed job is replaced by a new one (which resumes from its checkpoint).
    rerun = settings.model_copy(update={"rerun_failed": True})
    task = await cluster.launch(rerun)
    await cluster.until(lambda: cluster.creates() == 1)
    assert "status" not in cluster.job(name)
    cluster.conditions(name, ("Succeeded", "PyTorchJobSucceeded", "done"))
    outcome = await asyncio.wait_for(task, timeout=10)
    assert outcome.state == "Succeeded" and not outcome.reattached


@pytest.mark.asyncio
async def test_job_deleted_while_waiting(cluster: FakeCluster) -> None:
    settings = fast()
    task = await cluster.launch(settings)
    await cluster.until(lambda: cluster.job(settings.name) is not None)
    cluster.kmock.objects[JOBS, NS, settings.name].delete()
    with pytest.raises(PyTorchJobError, match="was deleted while the launcher waited"):
        await asyncio.wait_for(task, timeout=10)


@pytest.mark.asyncio
async def test_why_the_master_does_not_run_is_logged(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fast()
    name = settings.name
    unschedulable = "0/3 nodes are available: 3 Insufficient vpc.amazonaws.com/efa."
    with caplog.at_level(logging.WARNING, logger="components.train.pytorchjob"):
        task = await cluster.launch(settings)
        await cluster.until(lambda: cluster.job(name) is not None)
        cluster.add_pod(name, "master")
        pod = cluster.kmock.objects[PODS, NS, f"{name}-master-0"]
        pod.patch({"status": {"phase": "Pending", "containerStatuses": None}})
        pod.patch(
            {
                "status": {
                    "conditions": [{"type": "PodScheduled", "status": "False", "message": unschedulable}]
                }
            }
        )
        await cluster.until(lambda: unschedulable in caplog.text)
        waiting = {"reason": "CreateContainerConfigError", "message": 'secret "hf-credentials" not found'}
        status = {"name": "pytorch", "image": IMAGE, "imageID": "", "ready": False, "restartCount": 0}
        pod.patch(
            {"status": {"conditions": None, "containerStatuses": [{**status, "state": {"waiting": waiting}}]}}
        )
        await cluster.until(
            lambda: 'CreateContainerConfigError secret "hf-credentials" not found' in caplog.text
        )
        cluster.kmock.objects[JOBS, NS, name].delete()
        with pytest.raises(PyTorchJobError, match="deleted"):
            await asyncio.wait_for(task, timeout=10)
    assert caplog.text.count(unschedulable) == 1  # once per change, not once per poll


@pytest.mark.asyncio
async def test_missing_training_operator_is_named(cluster: FakeCluster) -> None:
    kmock = cluster.kmock
    kmock["post", kmock.resource(JOBS)] << 404 << {"kind": "Status", "code": 404, "reason": "NotFound"}
    with pytest.raises(PyTorchJobError, match="install the Kubeflow Training Operator"):
        await asyncio.wait_for(asyncio.to_thread(launch, fast(), cluster.client, cluster.sink.append), 10)


@pytest.mark.asyncio
async def test_forbidden_names_the_permissions(cluster: FakeCluster) -> None:
    kmock = cluster.kmock
    kmock["get", kmock.resource(JOBS)] << 403 << {"kind": "Status", "code": 403, "reason": "Forbidden"}
    with pytest.raises(PyTorchJobError, match="service account needs create/get/delete on pytorchjobs"):
        await asyncio.wait_for(asyncio.to_thread(launch, fast(), cluster.client, cluster.sink.append), 10)


@pytest.mark.asyncio
async def test_cleanup_delete_keep_and_missing(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fast()
    name = settings.name
    cluster.kmock.objects[JOBS, NS, name] = to_dict(build_pytorchjob(settings))
    cluster.conditions(name, ("Running", "PyTorchJobRunning", "r"))

    with caplog.at_level(logging.WARNING, logger="components.train.pytorchjob"):
        kept = await asyncio.to_thread(cleanup, name, NS, "keep", cluster.client)
    assert kept is False and cluster.job(name) is not None
    assert "still Running and holds its GPUs" in caplog.text

    deleted = await asyncio.to_thread(cleanup, name, NS, settings.cleanup, cluster.client)
    assert deleted is False  # the default policy is keep
    assert await asyncio.to_thread(cleanup, name, NS, "delete", cluster.client) is True
    assert cluster.job(name) is None
    assert await asyncio.to_thread(cleanup, name, NS, "delete", cluster.client) is False
    assert await asyncio.to_thread(cleanup, "llmft-train-none", NS, "keep", cluster.client) is False
    with pytest.raises(ValueError, match="unknown cleanup policy"):
        cleanup(name, NS, "purge", cluster.client)  # type: ignore[arg-type]


def test_failure_message_carries_everything() -> None:
    error = PyTorchJobFailed(
        "j", NS, "PyTorchJobFailed", "1 Worker replica(s) failed", ["a", "b"], ["pod p: x"]
    )
    assert str(error).splitlines() == [
        f"PyTorchJob {NS}/j failed: PyTorchJobFailed: 1 Worker replica(s) failed",
        "  pod p: x",
        "last 2 lines of the master's log:",
        "  a",
        "  b",
    ]
    assert json.dumps(error.log_tail) == '["a", "b"]'


def test_api_timeout_has_a_form_the_kubernetes_client_honours() -> None:
    # kubernetes' RESTClientObject applies an int or a (connect, read) pair and silently drops a float.
    from components.train.pytorchjob import API_TIMEOUT_S

    assert isinstance(API_TIMEOUT_S, tuple) and len(API_TIMEOUT_S) == 2
    assert all(isinstance(seconds, int) and seconds > 0 for seconds in API_TIMEOUT_S)


def test_the_profiles_secret_env_reaches_every_replica_and_the_jobs_own_wins() -> None:
    profile = p5_train(
        secret_env=[
            SecretEnv(name="HF_TOKEN", secret="profile-hf", key="token"),
            SecretEnv(name="WANDB_API_KEY", secret="wandb", key="key", optional=True),
        ]
    )
    data = to_dict(build_pytorchjob(make_settings(nodes=2, profile=profile)))
    for replica in data["spec"]["pytorchReplicaSpecs"].values():
        (container,) = replica["template"]["spec"]["containers"]
        env = env_of(container)
        assert env["WANDB_API_KEY"] == {"secretKeyRef": {"name": "wandb", "key": "key", "optional": True}}
        # The job's own secret_env names HF_TOKEN too: it wins, and the variable appears once.
        assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-credentials", "key": "token"}}
        assert [item["name"] for item in container["env"]].count("HF_TOKEN") == 1

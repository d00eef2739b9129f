"""The kubernetes rollout target end to end: kmock's Kubernetes API, real tritonserver, real MLflow server.

kmock serves an in-memory Kubernetes API on 127.0.0.1 and the step reaches it through a kubeconfig file,
as `llmft rollout` would. The test plays the API server's generation counter (bumped on every spec
write, synchronously, as the real one does) and the Deployment controller (an asyncio task writing
Deployment status and, in failure scenarios, pods). The Service address is pointed at a real tritonserver
from the nvidia-pytriton wheel on 127.0.0.1 (`kubernetes.http_url` / `grpc_url`, the port-forward
settings), so every smoke test is the real one: health, a generate request whose answer is checked
against transformers' greedy decoding of the same prompt, HTTP and gRPC infer, a gRPC stream. Promotion
moves aliases in the registry of the `mlflow server` fixture.

Every request the step makes is recorded; deploy/rbac/rollout-rbac.yaml must grant each of them, and
together the flows must use every permission the Role grants (no more, no less).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from mlflow import MlflowClient

from components import storage, tracking
from components.build.build import BuildConfig, build
from components.prompt import render_prompt
from components.resources import ResourceProfile
from components.rollout import local_triton
from components.rollout.cluster_api import API_CALLS, KubeApi
from components.rollout.kubernetes_target import (
    LAST_APPLIED,
    REVISION,
    SERVING_REVISION,
    apply_revision,
    plan_rollout,
)
from components.rollout.manifests import KubernetesSettings, build_manifests, revision_of
from components.rollout.promotion import CANDIDATE_ALIAS, PRODUCTION_ALIAS, ROLLOUT_TAG, ModelRegistry
from components.rollout.rollout import DEFAULT_SMOKE_PROMPT, RolloutConfig, RolloutError, rollout
from components.sample.tiny_model import TinyModelConfig, build_tiny_model

NS = "llmft"
DEPLOY = "apps/v1/deployments"
SERVICES = "v1/services"
HPAS = "autoscaling/v2/horizontalpodautoscalers"
PODS = "v1/pods"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/llmft-trtllm:0.1.0"
SMOKE_TOKENS = 8
RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac" / "rollout-rbac.yaml"
VERBS = {"FETCH": "get", "LIST": "list", "CREATE": "create", "UPDATE": "patch", "DELETE": "delete"}


# ---------------------------------------------------------------------------------------------------------
# A real Triton server, and the answer its model must give
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    repository: Path
    http_url: str
    grpc_url: str
    expected: str  # greedy decoding of the smoke prompt by transformers, in this process


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("k8s-served")
    model_dir = root / "model"
    build_tiny_model(TinyModelConfig(output=str(model_dir)))
    repository = root / "repository"
    build(BuildConfig(model=str(model_dir), output=str(repository), max_new_tokens=12, device="cpu"))
    server = rollout(
        RolloutConfig(repository=str(repository), keep_running=True, workdir=str(root / "server"))
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = render_prompt(DEFAULT_SMOKE_PROMPT)
    ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([ids]),
            max_new_tokens=SMOKE_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = output[0, len(ids) :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    expected = tokenizer.decode(new, skip_special_tokens=True)
    try:
        yield Served(repository, server.endpoint_http, server.endpoint_grpc, expected)
    finally:
        local_triton.stop_from_info(root / "server")


# ---------------------------------------------------------------------------------------------------------
# The registry: a registered model with three versions on the real MLflow server
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    uri: str
    name: str

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def alias(self, alias: str) -> str | None:
        try:
            return str(self.client().get_model_version_by_alias(self.name, alias).version)
        except Exception:  # the alias (or model) does not exist
            return None

    def tag(self, version: str, key: str) -> str | None:
        return self.client().get_model_version(self.name, version).tags.get(key)


@pytest.fixture
def registry(mlflow_server: str) -> Registry:
    name = f"support-bot-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    client.create_registered_model(name)
    for run in range(3):
        client.create_model_version(name, source=f"s3://models/runs/{run}/export")
    return Registry(mlflow_server, name)


# ---------------------------------------------------------------------------------------------------------
# kmock as the API server, the test as the Deployment controller
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FakeCluster:
    kmock: Any
    mode: str = "healthy"  # healthy | stuck | deadline
    log_lines: list[str] = field(default_factory=list)
    seen: int = 0  # requests already checked against the Role

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.kmock.objects[resource, NS, name]
        except KeyError:
            return None
        return None if obj.deleted else json.loads(json.dumps(obj.raw))

    def writes(self) -> list[Any]:
        """Every create, patch and delete request so far, oldest first."""
        return [
            r for r in self.kmock if r.action is not None and r.action.name in ("CREATE", "UPDATE", "DELETE")
        ]

    def calls(self) -> set[tuple[str, str, str]]:
        """(API group, resource, verb) of every Kubernetes request so far."""
        calls = set()
        for request in self.kmock:
            if request.resource is None or request.action is None:
                continue
            resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
            calls.add((request.resource.group or "", resource, VERBS[request.action.name]))
        return calls

    def add_crashing_pod(self, name: str) -> None:
        self.kmock.objects[PODS, NS, f"{name}-7d9f-abcde"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-7d9f-abcde",
                "namespace": NS,
                "labels": {"app.kubernetes.io/name": "tritonserver", "app.kubernetes.io/instance": name},
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "tritonserver",
                        "image": IMAGE,
                        "imageID": "",
                        "ready": False,
                        "restartCount": 4,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s"}},
                        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                    }
                ],
            },
        }
        self.log_lines = ["I1127 model.py loading", "E1127 failed to load 'llm': CUDA out of memory"]

    def control(self) -> None:
        """One pass of the Deployment controller over every Deployment."""
        for key in list(self.kmock.objects):
            if key[0] != DEPLOY or self.kmock.objects[key].deleted:
                continue
            obj = self.kmock.objects[key]
            generation = obj["metadata"].get("generation", 0)
            wanted = obj["spec"].get("replicas", 1)
            if self.mode == "healthy":
                status = {
                    "observedGeneration": generation,
                    "replicas": wanted,
                    "updatedReplicas": wanted,
                    "readyReplicas": wanted,
                    "availableReplicas": wanted,
                }
            elif self.mode == "stuck":  # the new pods never become ready; the old one is still there
                status = {
                    "observedGeneration": generation,
                    "replicas": wanted + 1,
                    "updatedReplicas": 1,
                    "availableReplicas": wanted,
                }
            else:
                status = {
                    "observedGeneration": generation,
                    "conditions": [
                        {
                            "type": "Progressing",
                            "status": "False",
                            "reason": "ProgressDeadlineExceeded",
                            "message": f"ReplicaSet of {key[2]} has timed out progressing.",
                        }
                    ],
                }
            if obj.get("status") != status:
                obj.patch({"status": None})
                obj.patch({"status": status})


@pytest_asyncio.fixture
async def cluster(kmock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeCluster]:
    for resource, kind in (
        (DEPLOY, "Deployment"),
        (SERVICES, "Service"),
        (HPAS, "HorizontalPodAutoscaler"),
        (PODS, "Pod"),
    ):
        kmock.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True)
    url = str(kmock.url).rstrip("/")
    assert url.startswith("http://127.0.0.1:")  # loopback only
    fake = FakeCluster(kmock=kmock)

    def bump_generation(request: Any) -> dict[str, Any]:
        # Like the API server: a write that changes the spec gets the next generation, in the same request.
        name = request.name or request.data["metadata"]["name"]
        obj = kmock.objects[DEPLOY, NS, name]
        if request.action.name == "CREATE" or "spec" in (request.data or {}):
            obj.patch({"metadata": {"generation": obj["metadata"].get("generation", 0) + 1}})
        return dict(obj.raw)

    kmock["post", kmock.resource(DEPLOY)] << bump_generation
    kmock["patch", kmock.resource(DEPLOY)] << bump_generation
    kmock["get", kmock.resource(PODS), kmock.subresource("log")] << (
        lambda request: "\n".join(fake.log_lines).encode()
    )

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": url}}],
                "users": [{"name": "test", "user": {}}],
                "contexts": [
                    {"name": "kmock", "context": {"cluster": "kmock", "user": "test", "namespace": NS}}
                ],
                "current-context": "kmock",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # never the in-cluster config

    async def controller() -> None:
        while True:
            fake.control()
            await asyncio.sleep(0.02)

    task = asyncio.create_task(controller())
    try:
        yield fake
    finally:
        task.cancel()
        # Whatever the test did, the step never made a call the shipped Role would refuse.
        assert fake.calls() <= rbac_rules(), fake.calls() - rbac_rules()


def rbac_rules() -> set[tuple[str, str, str]]:
    (role,) = [doc for doc in yaml.safe_load_all(RBAC.read_text()) if doc["kind"] == "Role"]
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def make_config(
    served: Served, registry: Registry | None, version: str | None, **kubernetes: Any
) -> RolloutConfig:
    settings: dict[str, Any] = {
        "namespace": NS,
        "pvc_claim": "model-store",
        "default_image": IMAGE,
        "profile": ResourceProfile(cpu_request="1", memory_request="2Gi", memory_limit="2Gi", shm_size="1Gi"),
        "http_url": served.http_url,
        "grpc_url": served.grpc_url,
        "timeout_s": 20.0,
        "poll_s": 0.05,
        **kubernetes,
    }
    return RolloutConfig(
        repository=str(served.repository),
        target="kubernetes",
        registered_model_name=registry.name if registry else "support-bot",
        model_version=version,
        smoke_max_tokens=SMOKE_TOKENS,
        smoke_expect=f"^{re.escape(served.expected)}$",
        kubernetes=KubernetesSettings(**settings),
    )


async def run_step(config: RolloutConfig, registry: Registry | None) -> Any:
    """The step as the KFP component and the CLI run it: inside its MLflow run, in a thread."""
    uri = registry.uri if registry else None
    result, _ = await asyncio.wait_for(
        asyncio.to_thread(tracking.run_step, "rollout", rollout, config, uri, "rollout-tests"), timeout=120
    )
    return result


def annotations(obj: dict[str, Any]) -> dict[str, str]:
    return obj["metadata"].get("annotations", {})


def template(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]


# ---------------------------------------------------------------------------------------------------------
# Flows
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_create_wait_smoke_promote_then_retry_is_a_no_op(
    cluster: FakeCluster, served: Served, registry: Registry
) -> None:
    config = make_config(served, registry, "1")
    result = await run_step(config, registry)

    name = "triton-" + registry.name
    assert result.healthy and result.deployment == f"{NS}/{name}"
    assert result.sample_output == served.expected and result.stream_output == served.expected
    assert (result.promoted_version, result.previous_production_version) == ("1", None)
    assert result.endpoint_http == served.http_url
    deployment = cluster.get(DEPLOY, name)
    service = cluster.get(SERVICES, name)
    assert deployment is not None and service is not None
    assert annotations(deployment)[REVISION] == result.revision
    assert annotations(deployment)[SERVING_REVISION] == result.revision
    assert cluster.get(HPAS, name) is None
    assert registry.alias(PRODUCTION_ALIAS) == "1" and registry.alias(CANDIDATE_ALIAS) is None
    assert registry.tag("1", ROLLOUT_TAG) == "promoted"

    # A KFP retry of the same step: same revision, nothing written to the cluster, still promoted.
    writes = len(cluster.writes())
    again = await run_step(config, registry)
    assert again.revision == result.revision and again.healthy
    assert (again.promoted_version, again.previous_production_version) == ("1", None)
    assert len(cluster.writes()) == writes
    assert registry.alias(PRODUCTION_ALIAS) == "1"

    # A retry whose smoke test fails undoes nothing: that revision passed before and serves.
    with pytest.raises(RolloutError, match="nothing restored"):
        await run_step(config.model_copy(update={"smoke_expect": "^positive$"}), registry)
    assert len(cluster.writes()) == writes
    assert registry.alias(PRODUCTION_ALIAS) == "1" and registry.tag("1", ROLLOUT_TAG) == "promoted"


@pytest.mark.asyncio
async def test_update_promotes_the_new_version_over_the_old(
    cluster: FakeCluster, served: Served, registry: Registry
) -> None:
    first = await run_step(make_config(served, registry, "1"), registry)
    name = "triton-" + registry.name
    generation = cluster.get(DEPLOY, name)["metadata"]["generation"]

    second = await run_step(
        make_config(served, registry, "2", replicas=2, pod_annotations={"team": "llm"}), registry
    )
    assert second.revision != first.revision
    assert (second.promoted_version, second.previous_production_version) == ("2", "1")
    deployment = cluster.get(DEPLOY, name)
    assert deployment["metadata"]["generation"] == generation + 1  # one spec write
    assert deployment["spec"]["replicas"] == 2
    assert template(deployment)["metadata"]["annotations"]["team"] == "llm"
    assert annotations(deployment)["llmft.io/previous-revision"] == first.revision
    assert registry.alias(PRODUCTION_ALIAS) == "2"


@pytest.mark.asyncio
async def test_failed_smoke_test_restores_the_previous_revision(
    cluster: FakeCluster, served: Served, registry: Registry
) -> None:
    good = await run_step(make_config(served, registry, "1"), registry)
    name = "triton-" + registry.name
    before = cluster.get(DEPLOY, name)

    # Version 2 answers something else than expected: the smoke test fails after the rollout completed.
    bad = make_config(served, registry, "2", replicas=3).model_copy(update={"smoke_expect": "^positive$"})
    with pytest.raises(RolloutError) as failure:
        await run_step(bad, registry)
    message = str(failure.value)
    assert "does not match smoke_expect '^positive$'" in message
    assert f"restored Deployment {NS}/{name} to revision {good.revision}" in message

    after = cluster.get(DEPLOY, name)
    assert after["spec"] == {**before["spec"]}  # the previous spec, exactly
    assert annotations(after)[REVISION] == good.revision
    assert annotations(after)[LAST_APPLIED] == annotations(before)[LAST_APPLIED]
    assert "llmft.io/previous-applied" not in annotations(after)
    assert registry.alias(PRODUCTION_ALIAS) == "1" and registry.alias(CANDIDATE_ALIAS) is None
    assert registry.tag("2", ROLLOUT_TAG) == "rolled_back"
    assert "does not match" in registry.tag("2", "llmft.rollout_error")

    # The restored revision runs again, and a new rollout starts from it normally.
    again = await run_step(make_config(served, registry, "3"), registry)
    assert again.previous_production_version == "1"


@pytest.mark.asyncio
async def test_first_rollout_that_fails_leaves_nothing_behind(
    cluster: FakeCluster, served: Served, registry: Registry
) -> None:
    config = make_config(served, registry, "1", autoscale_max_replicas=3)
    config = config.model_copy(update={"smoke_expect": "^positive$"})
    name = "triton-" + registry.name
    cluster.add_crashing_pod(name)
    with pytest.raises(RolloutError, match="deleted Deployment"):
        await run_step(config, registry)
    for resource in (DEPLOY, SERVICES, HPAS):
        assert cluster.get(resource, name) is None
    assert registry.alias(PRODUCTION_ALIAS) is None and registry.alias(CANDIDATE_ALIAS) is None


@pytest.mark.asyncio
async def test_timeout_names_the_pods_problem_and_restores(
    cluster: FakeCluster, served: Served, registry: Registry
) -> None:
    good = await run_step(make_config(served, registry, "1"), registry)
    name = "triton-" + registry.name
    cluster.mode = "stuck"
    cluster.add_crashing_pod(name)
    with pytest.raises(RolloutError) as failure:
        await run_step(make_config(served, registry, "2", replicas=2, timeout_s=1.0), registry)
    message = str(failure.value)
    assert "was not rolled out within 1 s (kubernetes.timeout_s)" in message
    assert "CrashLoopBackOff" in message and "exited with code 1" in message
    assert "CUDA out of memory" in message  # the crashed container's log tail
    assert f"restored Deployment {NS}/{name} to revision {good.revision}" in message
    assert cluster.get(DEPLOY, name)["spec"]["replicas"] == 1
    assert registry.alias(PRODUCTION_ALIAS) == "1"


@pytest.mark.asyncio
async def test_progress_deadline_fails_without_waiting_for_the_timeout(
    cluster: FakeCluster, served: Served, registry: Registry
) -> None:
    cluster.mode = "deadline"
    started = asyncio.get_running_loop().time()
    with pytest.raises(RolloutError, match="has timed out progressing"):
        await run_step(make_config(served, registry, "1", timeout_s=60.0), registry)
    assert asyncio.get_running_loop().time() - started < 30


@pytest.mark.asyncio
async def test_retry_after_a_crash_mid_rollout_finishes_or_undoes_it(
    cluster: FakeCluster, served: Served, registry: Registry
) -> None:
    good = await run_step(make_config(served, registry, "1"), registry)
    name = "triton-" + registry.name

    # An earlier attempt applied revision 2, even moved the production alias, and died (the pod was
    # evicted) before it could mark the Deployment as serving.
    update = make_config(served, registry, "2", replicas=2)
    manifest = storage.read_manifest(str(served.repository))
    objects = build_manifests(plan_rollout(update, manifest))
    await asyncio.to_thread(apply_revision, KubeApi.from_environment(), objects, revision_of(objects), [])
    await asyncio.to_thread(ModelRegistry(registry.uri, registry.name, "2").promote, f"{NS}/{name}")
    assert registry.alias(PRODUCTION_ALIAS) == "2"
    writes = len(cluster.writes())

    # The retry re-applies nothing; its failure still restores revision 1 from the recorded annotations,
    # and production goes back to version 1.
    failing = update.model_copy(update={"smoke_expect": "^positive$"})
    with pytest.raises(RolloutError, match=f"to revision {good.revision}"):
        await run_step(failing, registry)
    assert cluster.writes()[writes].action.name == "UPDATE"  # the first write after the crash: the restore
    assert annotations(cluster.get(DEPLOY, name))[REVISION] == good.revision
    assert registry.alias(PRODUCTION_ALIAS) == "1"

    # And a retry that passes just finishes the job.
    await asyncio.to_thread(apply_revision, KubeApi.from_environment(), objects, revision_of(objects), [])
    done = await run_step(update, registry)
    assert done.revision == revision_of(objects) and registry.alias(PRODUCTION_ALIAS) == "2"


@pytest.mark.asyncio
async def test_a_deployment_llmft_did_not_create_is_never_touched(
    cluster: FakeCluster, served: Served, registry: Registry
) -> None:
    name = "triton-" + registry.name
    cluster.kmock.objects[DEPLOY, NS, name] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "theirs"}},
        "spec": {"replicas": 5},
    }
    with pytest.raises(RolloutError, match="was not created by llmft"):
        await run_step(make_config(served, registry, "1"), registry)
    assert cluster.get(DEPLOY, name)["spec"] == {"replicas": 5}
    assert registry.alias(PRODUCTION_ALIAS) is None


@pytest.mark.asyncio
async def test_turning_autoscaling_off_deletes_the_hpa_and_a_failure_brings_it_back(
    cluster: FakeCluster, served: Served, registry: Registry
) -> None:
    await run_step(make_config(served, registry, "1", autoscale_max_replicas=4), registry)
    name = "triton-" + registry.name
    assert cluster.get(HPAS, name)["spec"]["maxReplicas"] == 4
    assert "replicas" not in json.loads(annotations(cluster.get(DEPLOY, name))[LAST_APPLIED])["spec"]

    failing = make_config(served, registry, "2").model_copy(update={"smoke_expect": "^positive$"})
    with pytest.raises(RolloutError, match=f"re-created HorizontalPodAutoscaler {NS}/{name}"):
        await run_step(failing, registry)
    assert cluster.get(HPAS, name)["spec"]["maxReplicas"] == 4

    await run_step(make_config(served, registry, "2"), registry)
    assert cluster.get(HPAS, name) is None
    assert cluster.get(DEPLOY, name)["spec"]["replicas"] == 1


@pytest.mark.asyncio
async def test_s3_repository_and_no_registry(cluster: FakeCluster, served: Served, s3_bucket: Any) -> None:
    manifest = storage.read_manifest(str(served.repository))
    uri = s3_bucket.uri("runs", "9", "build")
    storage.publish_dir(served.repository, uri, manifest.producer, manifest.metadata)
    config = make_config(served, None, None, pvc_claim=None, s3_credentials_secret="s3-reader")
    result = await run_step(config.model_copy(update={"repository": uri}), None)
    assert result.healthy and result.promoted_version is None
    container = template(cluster.get(DEPLOY, "triton-support-bot"))["spec"]["containers"][0]
    assert f"--model-repository={uri}" in container["args"]
    assert {e["name"] for e in container["env"]} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


@pytest.mark.asyncio
async def test_promotion_needs_tracking(cluster: FakeCluster, served: Served) -> None:
    with pytest.raises(RolloutError, match="MLflow tracking is off"):
        await run_step(make_config(served, None, "4"), None)
    assert not cluster.writes()


# ---------------------------------------------------------------------------------------------------------
# Least privilege: the Role grants exactly what the flows use
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_role_grants_exactly_the_calls_the_rollout_makes(
    cluster: FakeCluster, served: Served, registry: Registry
) -> None:
    name = "triton-" + registry.name
    # A first rollout the controller gives up on, with an HPA and a crashed pod: create, get, list pods,
    # read the crashed pod's log, delete everything.
    cluster.mode = "deadline"
    cluster.add_crashing_pod(name)
    with pytest.raises(RolloutError, match="CUDA out of memory"):
        await run_step(make_config(served, registry, "1", autoscale_max_replicas=2), registry)
    # Create with an HPA, update it (patch all three, mark the serving revision), then drop it (delete).
    cluster.mode = "healthy"
    await run_step(make_config(served, registry, "1", autoscale_max_replicas=2), registry)
    await run_step(make_config(served, registry, "2", autoscale_max_replicas=3), registry)
    await run_step(make_config(served, registry, "3", replicas=2), registry)

    assert cluster.calls() == rbac_rules() == set(API_CALLS)


def test_role_is_namespaced_and_bound_to_its_service_account() -> None:
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(RBAC.read_text())}
    assert set(docs) == {"ServiceAccount", "Role", "RoleBinding"}
    namespace = docs["Role"]["metadata"]["namespace"]
    assert docs["ServiceAccount"]["metadata"]["namespace"] == namespace
    binding = docs["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "llmft-rollout",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "llmft-rollout", "namespace": namespace}
    ]

"""The kubernetes rollout target's manifests (pure): schema-valid, profile applied, credentials by reference.

Every manifest passes kubernetes-validate in strict mode (unknown fields are errors) for Kubernetes 1.30,
the version the README states. `llmft rollout --target kubernetes --dry-run` prints the same objects as
multi-document YAML without any cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from components import storage
from components.resources import EFA_RESOURCE, GPU_RESOURCE, ResourceProfile, preset_profiles
from components.rollout.kubernetes_target import (
    KubernetesRolloutError,
    annotated,
    applied_view,
    deployment_progress,
    merge_patch_diff,
    plan_rollout,
    pod_report,
)
from components.rollout.manifests import (
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    KubernetesSettings,
    ManifestError,
    build_manifests,
    engine_gpus,
    manifests_yaml,
    release_name,
    revision_of,
    sized_profile,
)
from components.rollout.rollout import RolloutConfig, RolloutError, rollout
from pipelines.cli import main

K8S_VERSION = "1.30"  # the Kubernetes version the README states for schema checks
S3_REPO = "s3://models/runs/42/build"
DIGEST = "ab" * 32
ENGINE = {
    "serving_mode": "trtllm-engine",
    "model_name": "llm",
    "trtllm_version": "1.2.1",
    "gpu_arch": "sm90",
    "tensor_parallel": 2,
    "pipeline_parallel": 1,
    "max_batch_size": 8,
    "max_input_len": 1024,
    "max_seq_len": 2048,
    "max_num_tokens": 8192,
    "quantization": "none",
    "triton_image": "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3",
}
HF = {"serving_mode": "hf", "model_name": "llm"}
HF_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/llmft-trtllm:0.1.0"


def config(**kubernetes: Any) -> RolloutConfig:
    return RolloutConfig(
        repository=S3_REPO,
        target="kubernetes",
        registered_model_name="support-bot",
        kubernetes=KubernetesSettings(namespace="team-llm", default_image=HF_IMAGE, **kubernetes),
    )


def objects_for(metadata: dict[str, Any], **kubernetes: Any) -> list[dict[str, Any]]:
    return build_manifests(plan_rollout(config(**kubernetes), metadata, DIGEST))


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "kubernetes",
    [
        {},
        {"s3_credentials_secret": "s3-reader", "s3_region": "eu-west-1", "autoscale_max_replicas": 4},
        {
            "pvc_claim": "model-store",
            "pvc_path": "runs/42/build",
            "autoscale_max_replicas": 3,
            "autoscale_pods_metric": "triton_queue_us",
            "autoscale_pods_target": "50k",
        },
    ],
    ids=["s3-irsa", "s3-secret-hpa", "pvc-custom-metric"],
)
def test_manifests_pass_the_strict_schema(kubernetes: dict[str, Any]) -> None:
    objects = objects_for(ENGINE, **kubernetes)
    assert [obj["kind"] for obj in objects][:2] == ["Service", "Deployment"]
    for obj in objects:
        validate(obj)
        # What the apply step sends (with its bookkeeping annotations) is valid too.
        validate(annotated(obj, "r1", obj, "r0"))
    template = by_kind(objects)["Deployment"]["spec"]["template"]
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": template["spec"]})


def test_deployment_runs_tritonserver_with_probes_ports_and_labels() -> None:
    objects = by_kind(objects_for(ENGINE))
    deployment, service = objects["Deployment"], objects["Service"]
    name = release_name("support-bot")
    assert name == "triton-support-bot"
    for obj in (deployment, service):
        assert obj["metadata"]["name"] == name and obj["metadata"]["namespace"] == "team-llm"
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "tritonserver"
        assert labels["app.kubernetes.io/instance"] == name
        assert labels["app.kubernetes.io/managed-by"] == "llmft"
        assert labels["app.kubernetes.io/part-of"] == "llmft"
        assert labels["app.kubernetes.io/version"] == DIGEST[:12]
    selector = {"app.kubernetes.io/name": "tritonserver", "app.kubernetes.io/instance": name}
    assert deployment["spec"]["selector"] == {"matchLabels": selector}
    assert service["spec"]["selector"] == selector
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "http": HTTP_PORT,
        "grpc": GRPC_PORT,
        "metrics": METRICS_PORT,
    }
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}

    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The engine was built for TRT-LLM 1.2.1: the build's recorded image serves it.
    assert container["image"] == ENGINE["triton_image"]
    assert container["command"] == ["tritonserver"]
    assert f"--model-repository={S3_REPO}" in container["args"]
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"} <= set(container["args"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 1800
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False  # Triton never talks to the API
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8002"


def test_profile_gives_gpus_efa_shm_tolerations_and_node_selector() -> None:
    profile = preset_profiles("p5").build.model_copy(
        update={"efa": 4, "service_account": "triton-s3", "priority_class": "serving"}
    )
    deployment = by_kind(objects_for(ENGINE, profile=profile))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    limits = container["resources"]["limits"]
    # tensor_parallel 2 x pipeline_parallel 1: a quarter of the 8-GPU node profile, sized in proportion.
    assert limits[GPU_RESOURCE] == "2" and limits[EFA_RESOURCE] == "4"
    assert container["resources"]["requests"] == {"cpu": "24", "memory": "250Gi"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {
        "node.kubernetes.io/instance-type": "p5.48xlarge",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    }
    assert pod["serviceAccountName"] == "triton-s3" and pod["priorityClassName"] == "serving"
    assert {"name": "FI_PROVIDER", "value": "efa"} in container["env"]


def test_s3_credentials_only_by_secret_reference() -> None:
    objects = objects_for(
        HF,
        s3_credentials_secret="s3-reader",
        s3_region="eu-west-1",
        s3_endpoint="https://minio.minio.svc:9000",
    )
    container = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert "value" not in env[variable]
        assert env[variable]["valueFrom"]["secretKeyRef"]["name"] == "s3-reader"
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["AWS_DEFAULT_REGION"] == {"name": "AWS_DEFAULT_REGION", "value": "eu-west-1"}
    # Triton's form for an S3-compatible endpoint: s3://<scheme>://<host>:<port>/<bucket>/<path>.
    assert "--model-repository=s3://https://minio.minio.svc:9000/models/runs/42/build" in container["args"]
    # hf repositories record no triton_image: the default image (tritonserver + transformers) serves them.
    assert container["image"] == HF_IMAGE


def test_pvc_repository_is_mounted_read_only() -> None:
    objects = objects_for(HF, pvc_claim="model-store", pvc_path="runs/42/build")
    pod = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--model-repository=/models/runs/42/build" in container["args"]
    assert {
        "name": "model-repository",
        "persistentVolumeClaim": {"claimName": "model-store", "readOnly": True},
    } in pod["volumes"]
    assert {"name": "model-repository", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    assert "env" not in container  # no S3, no credentials


def test_hpa_owns_the_replica_count() -> None:
    objects = by_kind(objects_for(HF, replicas=2, autoscale_max_replicas=6))
    hpa, deployment = objects["HorizontalPodAutoscaler"], objects["Deployment"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "triton-support-bot",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {
        "type": "Utilization",
        "averageUtilization": 80,
    }
    assert "replicas" not in deployment["spec"]  # a rollout must not undo the HPA's scaling
    assert "replicas" in by_kind(objects_for(HF, replicas=2))["Deployment"]["spec"]


def test_names_sizes_and_revisions_are_deterministic() -> None:
    assert release_name("llmft-model") == "triton-llmft-model"
    long = release_name("My_Very.Long Model Name " * 5)
    assert len(long) <= 63 and long == release_name("My_Very.Long Model Name " * 5)
    assert long != release_name("My_Very.Long Model Name " * 6)  # hash of the full name
    assert release_name("Llama") != release_name("llama")  # changed names get a hash suffix
    assert objects_for(ENGINE) == objects_for(ENGINE)
    assert revision_of(objects_for(ENGINE)) != revision_of(objects_for(ENGINE, replicas=2))
    assert engine_gpus({}) == 1 and engine_gpus({"tensor_parallel": 4, "pipeline_parallel": 2}) == 8
    cpu_profile = ResourceProfile(cpu_request="2", memory_request="4Gi")
    assert sized_profile(cpu_profile, 1) is cpu_profile
    half = sized_profile(ResourceProfile(gpus=2, cpu_request="3", memory_limit="3Gi"), 1)
    assert (half.gpus, half.cpu_request, half.memory_limit) == (1, "1500m", "1536Mi")


@pytest.mark.parametrize(
    ("metadata", "kubernetes", "message"),
    [
        # Engine built with TRT-LLM 1.2.1, image carrying 1.1.0: serving_compat refuses it.
        (ENGINE, {"image": "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"}, "TRT-LLM 1.1.0"),
        # Engine built on sm90 (H100), node pool of A100s (sm80).
        (ENGINE, {"profile": preset_profiles("p4d").build}, "sm80"),
        (ENGINE, {"size_to_engine": False}, "kubernetes.profile.gpus is 8"),
        (
            HF,
            {"autoscale_max_replicas": 2, "profile": ResourceProfile(gpus=1)},
            "kubernetes.profile.cpu_request",
        ),
    ],
)
def test_incompatible_or_inconsistent_settings_are_refused(
    metadata: dict[str, Any], kubernetes: dict[str, Any], message: str
) -> None:
    with pytest.raises((KubernetesRolloutError, ManifestError), match=message):
        objects_for(metadata, **kubernetes)


def test_local_repository_needs_a_claim() -> None:
    with pytest.raises(KubernetesRolloutError, match="not on s3://"):
        plan_rollout(config().model_copy(update={"repository": "/data/build"}), HF, DIGEST)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("namespace", "Team_LLM"),
        ("name", "9-starts-with-a-digit"),
        ("s3_endpoint", "minio:9000/path"),
        ("grpc_url", "http://x:1"),
        ("pvc_path", "../escape"),
    ],
)
def test_settings_name_the_bad_field(field: str, value: str) -> None:
    extra = {"pvc_claim": "c"} if field == "pvc_path" else {}
    with pytest.raises(ValidationError, match=field):
        KubernetesSettings(**{field: value, **extra})


def test_dry_run_only_for_kubernetes_and_smoke_expect_must_compile() -> None:
    with pytest.raises(ValidationError, match="dry_run"):
        RolloutConfig(repository="r", dry_run=True)
    with pytest.raises(ValidationError, match="smoke_expect"):
        RolloutConfig(repository="r", smoke_expect="(")


# --- revision bookkeeping and controller status (pure) ------------------------------------------


def test_merge_patch_diff_sets_changes_and_removes_keys() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2], "gone": "x"}
    new = {"a": 1, "b": {"c": 5, "d": 3}, "l": [1], "added": {"e": 1}}
    assert merge_patch_diff(old, new) == {"b": {"c": 5}, "l": [1], "added": {"e": 1}, "gone": None}
    assert merge_patch_diff(new, new) == {}


def test_applied_view_ignores_what_the_server_added() -> None:
    obj = objects_for(HF)[1]
    live = json.loads(json.dumps(annotated(obj, "r1", None, None)))
    live["metadata"]["generation"] = 3
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "7"
    live["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    live["status"] = {"replicas": 1}
    assert applied_view(live) == annotated(obj, "r1", None, None)
    # Replacing it with a new revision touches only what llmft set.
    changed = annotated({**obj, "spec": {**obj["spec"], "replicas": 3}}, "r2", obj, "r1")
    patch = merge_patch_diff(applied_view(live), changed)
    assert patch["spec"] == {"replicas": 3}
    assert set(patch["metadata"]["annotations"]) == {
        "llmft.io/last-applied",
        "llmft.io/revision",
        "llmft.io/previous-applied",
        "llmft.io/previous-revision",
    }


@pytest.mark.parametrize(
    ("status", "generation", "done"),
    [
        ({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, 2, True),
        ({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, 2, False),
        ({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}, 2, False),
        ({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}, 2, False),
        ({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 2}, 2, False),
    ],
    ids=["rolled-out", "stale-status", "old-pod-left", "not-available", "not-updated"],
)
def test_deployment_progress(status: dict[str, Any], generation: int, done: bool) -> None:
    deployment = {"metadata": {"generation": generation}, "spec": {"replicas": 2}, "status": status}
    assert deployment_progress(deployment)[0] is done


def test_progress_deadline_and_pod_reports() -> None:
    stuck = {
        "metadata": {"generation": 2},
        "spec": {"replicas": 1},
        "status": {
            "observedGeneration": 2,
            "conditions": [
                {"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "too slow"}
            ],
        },
    }
    assert deployment_progress(stuck) == (False, deployment_progress(stuck)[1], "too slow")
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "message": "0/3 nodes: Insufficient nvidia.com/gpu",
                }
            ],
            "containerStatuses": [
                {
                    "name": "tritonserver",
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                }
            ],
        },
    }
    problems, crashed = pod_report(pod)
    assert crashed == "tritonserver"
    assert any("Insufficient nvidia.com/gpu" in line for line in problems)
    assert any("CrashLoopBackOff" in line for line in problems)
    assert any("exited with code 1" in line for line in problems)


# --- dry run: the CLI prints the manifests and touches nothing ------------------------------------


def test_cli_dry_run_prints_every_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    repository = tmp_path / "repository"
    (repository / "llm" / "1").mkdir(parents=True)
    (repository / "llm" / "config.pbtxt").write_text('backend: "python"\n')
    storage.publish_dir(repository, str(repository), "llmft.build", HF)
    # No cluster and no registry exist: nothing may be contacted.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = main(
        [
            "rollout",
            "--repository",
            str(repository),
            "--target",
            "kubernetes",
            "--dry-run",
            "--registered-model-name",
            "support-bot",
            "--kubernetes-namespace",
            "team-llm",
            "--kubernetes-pvc-claim",
            "model-store",
            "--kubernetes-autoscale-max-replicas",
            "3",
            "--kubernetes-default-image",
            HF_IMAGE,
        ]
    )
    assert code == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [doc["kind"] for doc in documents] == ["Service", "Deployment", "HorizontalPodAutoscaler"]
    for doc in documents:
        validate(doc)
    assert documents[1]["metadata"]["namespace"] == "team-llm"
    plan = plan_rollout(
        RolloutConfig(
            repository=str(repository),
            target="kubernetes",
            registered_model_name="support-bot",
            kubernetes=KubernetesSettings(
                namespace="team-llm",
                pvc_claim="model-store",
                autoscale_max_replicas=3,
                default_image=HF_IMAGE,
            ),
        ),
        HF,
        storage.read_manifest(str(repository)).digest,
    )
    assert documents == build_manifests(plan)
    assert manifests_yaml(documents) == manifests_yaml(build_manifests(plan))


def test_rollout_dry_run_result_holds_the_manifests(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    (repository / "llm").mkdir(parents=True)
    storage.publish_dir(repository, str(repository), "llmft.build", HF)
    result = rollout(
        RolloutConfig(
            repository=str(repository),
            target="kubernetes",
            dry_run=True,
            kubernetes=KubernetesSettings(pvc_claim="model-store", default_image=HF_IMAGE),
        )
    )
    assert result.dry_run and not result.healthy and result.revision
    assert result.summary() == result.manifests
    assert result.endpoint_http == "http://triton-llm.llmft.svc.cluster.local:8000"


def test_incomplete_repository_is_refused_before_anything(tmp_path: Path) -> None:
    with pytest.raises(storage.IncompleteDirectoryError):
        rollout(RolloutConfig(repository=str(tmp_path), target="kubernetes", dry_run=True))
    with pytest.raises(RolloutError, match="not on s3://"):
        repository = tmp_path / "r"
        (repository / "llm").mkdir(parents=True)
        storage.publish_dir(repository, str(repository), "llmft.build", HF)
        rollout(RolloutConfig(repository=str(repository), target="kubernetes", dry_run=True))

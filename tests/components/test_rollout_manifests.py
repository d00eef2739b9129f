"""The kubernetes rollout target's manifests (pure): schema-valid, profile applied, credentials by reference.

Every manifest passes kubernetes-validate in strict mode (unknown fields are errors) for Kubernetes 1.30,
the version the README states. `llmft rollout --target kubernetes --dry-run` prints the same objects as
multi-document YAML without any cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from components import storage
from components.images import load_images
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
# Not build's default /models: the pod must follow what the repository's metadata says.
ENGINE_REPOSITORY_PATH = "/srv/llm-repository"
ENGINE_SIZE = 30 * 2**30  # the engine's bytes in the repository's manifest
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
    # What build records for trtllm-engine: config.pbtxt's gpt_model_path is this engine_path.
    "model_repository_path": ENGINE_REPOSITORY_PATH,
    "engine_path": f"{ENGINE_REPOSITORY_PATH}/tensorrt_llm/1/engine",
}
HF = {"serving_mode": "hf", "model_name": "llm"}
# What build records for trtllm-llmapi: no model_repository_path, its model.py resolves the checkpoint
# relative to its version directory.
LLMAPI = {
    **{key: value for key, value in ENGINE.items() if key not in ("model_repository_path", "engine_path")},
    "serving_mode": "trtllm-llmapi",
    "gpu_arch": "any",
}
HF_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/llmft-trtllm:0.1.0"


def config(**kubernetes: Any) -> RolloutConfig:
    return RolloutConfig(
        repository=S3_REPO,
        target="kubernetes",
        registered_model_name="support-bot",
        kubernetes=KubernetesSettings(namespace="team-llm", default_image=HF_IMAGE, **kubernetes),
    )


def manifest_of(metadata: dict[str, Any]) -> storage.Manifest:
    """A repository manifest with `metadata`: an engine of ENGINE_SIZE bytes and a config."""
    files = [
        storage.FileEntry("tensorrt_llm/1/engine/rank0.engine", ENGINE_SIZE, "ab" * 32),
        storage.FileEntry("tensorrt_llm/config.pbtxt", 2048, "cd" * 32),
    ]
    return storage.Manifest(
        files=files, created_at="2025-01-01T00:00:00+00:00", producer="t", metadata=metadata
    )


DIGEST = manifest_of({}).digest


def objects_for(metadata: dict[str, Any], **kubernetes: Any) -> list[dict[str, Any]]:
    return build_manifests(plan_rollout(config(**kubernetes), manifest_of(metadata)))


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("metadata", "kubernetes"),
    [
        (ENGINE, {}),
        (
            ENGINE,
            {
                "s3_credentials_secret": "s3-reader",
                "s3_region": "eu-west-1",
                "s3_endpoint": "https://minio.minio.svc:9000",
                "autoscale_max_replicas": 4,
            },
        ),
        (
            ENGINE,
            {
                "pvc_claim": "model-store",
                "pvc_path": "runs/42/build",
                "autoscale_max_replicas": 3,
                "autoscale_pods_metric": "triton_queue_us",
                "autoscale_pods_target": "50k",
            },
        ),
        (HF, {"s3_credentials_secret": "s3-reader", "s3_region": "eu-west-1"}),
        (LLMAPI, {"pvc_claim": "model-store", "pvc_path": "runs/42/build"}),
    ],
    ids=["engine-s3-irsa", "engine-s3-secret-hpa", "engine-pvc-custom-metric", "hf-s3-secret", "llmapi-pvc"],
)
def test_manifests_pass_the_strict_schema(metadata: dict[str, Any], kubernetes: dict[str, Any]) -> None:
    objects = objects_for(metadata, **kubernetes)
    assert [obj["kind"] for obj in objects][:2] == ["Service", "Deployment"]
    for obj in objects:
        validate(obj)
        # What the apply step sends (with its bookkeeping annotations) is valid too.
        validate(annotated(obj, "r1", obj, "r0"))
    template = by_kind(objects)["Deployment"]["spec"]["template"]
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": template["spec"]})


def test_deployment_runs_tritonserver_with_probes_ports_and_labels() -> None:
    # One GPU: tritonserver itself is the container's command (multi-GPU launches are tested below).
    objects = by_kind(objects_for({**ENGINE, "tensor_parallel": 1}))
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
    assert f"--model-repository={ENGINE_REPOSITORY_PATH}" in container["args"]
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"} <= set(container["args"])
    # tritonserver refuses a request body over 8 MiB itself (400), before any model buffers it.
    assert "--http-max-input-size=8388608" in container["args"]
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
    # tensor_parallel 2 x pipeline_parallel 1: twice the 1-GPU build profile, sized in proportion.
    assert limits[GPU_RESOURCE] == "2" and limits[EFA_RESOURCE] == "4"
    assert container["resources"]["requests"] == {"cpu": "40", "memory": "480Gi"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {
        "node.kubernetes.io/instance-type": "p5.48xlarge",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    }
    assert pod["serviceAccountName"] == "triton-s3" and pod["priorityClassName"] == "serving"
    assert {"name": "FI_PROVIDER", "value": "efa"} in container["env"]


def app_contexts(args: list[str]) -> list[list[str]]:
    """mpirun's per-rank app contexts (`-n 1 tritonserver ...`), split at its ':' separators."""
    assert args[0] == "--allow-run-as-root" and args[-1] == ":"
    contexts: list[list[str]] = [[]]
    for arg in args[1:-1]:
        if arg == ":":
            contexts.append([])
        else:
            contexts[-1].append(arg)
    return contexts


def test_multi_gpu_engine_runs_one_tritonserver_per_gpu_under_mpirun() -> None:
    engine = {**ENGINE, "tensor_parallel": 2, "pipeline_parallel": 2}
    pod = by_kind(objects_for(engine))["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"][GPU_RESOURCE] == "4"
    assert container["command"] == ["mpirun"]
    ranks = app_contexts(container["args"])
    assert len(ranks) == 4  # the MPI world: tensor_parallel x pipeline_parallel
    ports = {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"}
    for rank, context in enumerate(ranks):
        assert context[:3] == ["-n", "1", "tritonserver"]
        assert f"--model-repository={ENGINE_REPOSITORY_PATH}" in context
        assert "--disable-auto-complete-config" in context and ports <= set(context)
        # Each rank's python backend stubs get their own /dev/shm regions.
        assert context[-1] == f"--backend-config=python,shm-region-prefix-name=prefix{rank}_"
        # Rank 0 serves every model; the others only run their shard of the engine.
        explicit = ["--model-control-mode=explicit", "--load-model=tensorrt_llm"]
        assert all(arg in context for arg in explicit) == (rank > 0)
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod})


def test_multi_gpu_llmapi_runs_one_tritonserver_under_mpirun_that_spawns_the_workers() -> None:
    pod = by_kind(objects_for(LLMAPI))["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert LLMAPI["tensor_parallel"] == 2 and container["resources"]["limits"][GPU_RESOURCE] == "2"
    assert container["command"] == ["mpirun"]
    (rank0,) = app_contexts(container["args"])  # world size 1: the LLM API spawns its 2 workers
    assert rank0[:3] == ["-n", "1", "tritonserver"]
    assert rank0[-1] == "--backend-config=python,shm-region-prefix-name=prefix0_"
    assert not any(arg.startswith("--load-model") for arg in rank0)
    assert "TRTLLM_ORCHESTRATOR" not in {env["name"] for env in container.get("env", [])}


@pytest.mark.parametrize("metadata", [{**LLMAPI, "tensor_parallel": 1}, HF], ids=["llmapi-1-gpu", "hf"])
def test_single_gpu_repositories_run_tritonserver_directly(metadata: dict[str, Any]) -> None:
    (container,) = by_kind(objects_for(metadata))["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["tritonserver"]
    assert not any("shm-region-prefix-name" in arg for arg in container["args"])


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
    # Files on the claim may belong to another uid: the volume gets tritonserver's group (uid 1000's).
    assert pod["securityContext"]["fsGroup"] == container["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    validate(by_kind(objects)["Deployment"])


# --- repositories whose models open files by absolute path (trtllm-engine) ------------------------


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def test_engine_repository_from_s3_is_copied_to_its_path_by_an_init_container() -> None:
    objects = objects_for(
        ENGINE,
        s3_credentials_secret="s3-reader",
        s3_region="eu-west-1",
        s3_endpoint="https://minio.minio.svc:9000",
    )
    pod = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    (triton,) = pod["containers"]
    # One emptyDir holds the copy: the manifest's 30 GiB + 2 KiB, + 10% + 1 GiB, rounded up to Mi.
    size_limit = f"{34 * 1024 + 1}Mi"
    assert {"name": "model-repository", "emptyDir": {"sizeLimit": size_limit}} in pod["volumes"]
    assert fetch["volumeMounts"] == [{"name": "model-repository", "mountPath": ENGINE_REPOSITORY_PATH}]
    assert {"name": "model-repository", "mountPath": ENGINE_REPOSITORY_PATH, "readOnly": True} in triton[
        "volumeMounts"
    ]
    # So the engine lies where config.pbtxt's gpt_model_path (the metadata's engine_path) says.
    assert ENGINE["engine_path"].startswith(ENGINE_REPOSITORY_PATH + "/")
    assert f"--model-repository={ENGINE_REPOSITORY_PATH}" in triton["args"]
    assert not any("s3://" in arg for arg in triton["args"])

    # The init container: llmft's base image running the fetch entry point on the repository.
    assert fetch["image"] == load_images().for_family("base")
    assert fetch["command"] == [
        "python",
        "-m",
        "components.rollout.fetch_repository",
        S3_REPO,
        ENGINE_REPOSITORY_PATH,
    ]
    assert fetch["securityContext"]["runAsNonRoot"] is True
    # S3 access only there, credentials only by reference; boto3 takes the endpoint from the environment.
    env = env_of(fetch)
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert "value" not in env[variable]
        assert env[variable]["valueFrom"]["secretKeyRef"] == {
            "name": "s3-reader",
            "key": variable,
            **({"optional": True} if variable == "AWS_SESSION_TOKEN" else {}),
        }
    assert env["AWS_DEFAULT_REGION"]["value"] == "eu-west-1"
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "https://minio.minio.svc:9000"
    # tritonserver reads a local directory: it gets no S3 access at all.
    assert not [name for name in env_of(triton) if name.startswith("AWS_")]

    # Room for the copy is requested; CPU and memory are tritonserver's (same scheduling, same QoS class),
    # and the GPUs stay with tritonserver.
    fetch_resources, triton_resources = fetch["resources"], triton["resources"]
    assert fetch_resources["requests"] == {
        "cpu": triton_resources["requests"]["cpu"],
        "memory": triton_resources["requests"]["memory"],
        "ephemeral-storage": size_limit,
    }
    assert fetch_resources["limits"] == {"memory": triton_resources["limits"]["memory"]}
    assert triton_resources["limits"][GPU_RESOURCE] == "2"


def test_engine_repository_path_follows_the_metadata_and_the_default_fetch_image_can_be_replaced() -> None:
    metadata = {**ENGINE, "model_repository_path": "/models", "engine_path": "/models/tensorrt_llm/1/engine"}
    pod = by_kind(objects_for(metadata, fetch_image="registry.example/llmft-base:9"))["Deployment"]
    spec = pod["spec"]["template"]["spec"]
    assert spec["initContainers"][0]["image"] == "registry.example/llmft-base:9"
    assert spec["initContainers"][0]["command"][-1] == "/models"
    assert "--model-repository=/models" in spec["containers"][0]["args"]
    # IRSA (no Secret): no credentials anywhere, the pod's service account reads S3.
    assert "env" not in spec["initContainers"][0]


@pytest.mark.parametrize(
    ("pvc_path", "sub_path"), [("runs/42/build", {"subPath": "runs/42/build"}), ("", {})]
)
def test_engine_repository_on_a_pvc_is_mounted_at_its_path(pvc_path: str, sub_path: dict[str, str]) -> None:
    objects = objects_for(ENGINE, pvc_claim="model-store", pvc_path=pvc_path)
    pod = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "initContainers" not in pod
    assert {
        "name": "model-repository",
        "persistentVolumeClaim": {"claimName": "model-store", "readOnly": True},
    } in pod["volumes"]
    # The repository itself (the claim's pvc_path), not the claim's root, is at model_repository_path.
    mount = {"name": "model-repository", "mountPath": ENGINE_REPOSITORY_PATH, "readOnly": True, **sub_path}
    assert mount in container["volumeMounts"]
    assert f"--model-repository={ENGINE_REPOSITORY_PATH}" in container["args"]
    assert not [name for name in env_of(container) if name.startswith("AWS_")]


@pytest.mark.parametrize("metadata", [HF, LLMAPI], ids=["hf", "trtllm-llmapi"])
def test_repositories_with_relative_paths_are_read_by_triton_from_s3(metadata: dict[str, Any]) -> None:
    pod = by_kind(objects_for(metadata, s3_credentials_secret="s3-reader"))["Deployment"]
    spec = pod["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert "initContainers" not in spec
    assert f"--model-repository={S3_REPO}" in container["args"]
    assert env_of(container)["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3-reader"
    assert "model-repository" not in {volume["name"] for volume in spec.get("volumes", [])}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (None, "has no model_repository_path"),
        ("models", "not a normalized absolute path"),
        ("/models/../etc", "not a normalized absolute path"),
        ("/", "cannot be a mount point"),
        ("/dev/shm/models", "cannot be a mount point"),
        ("/dev", "cannot be a mount point"),
        ("/models:1", "cannot be a mount point"),
    ],
)
def test_engine_repository_paths_that_cannot_be_mounted_are_refused(path: str | None, message: str) -> None:
    metadata = {key: value for key, value in ENGINE.items() if key != "model_repository_path"}
    if path is not None:
        metadata["model_repository_path"] = path
    for kubernetes in ({}, {"pvc_claim": "model-store"}):
        with pytest.raises(KubernetesRolloutError, match=message):
            objects_for(metadata, **kubernetes)


def test_engine_repository_from_s3_lands_where_gpt_model_path_points(
    s3_bucket, tiny_base_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run the init container's command as the Deployment says, on a repository as build writes it."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from components.build.build import BuildConfig, build

    served_at = tmp_path / "pod" / "models"  # the emptyDir, mounted at model_repository_path
    staging = tmp_path / "build"
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # a dry run: everything but the engine
    build(
        BuildConfig(
            model=tiny_base_model,
            output=str(staging),
            serving_mode="trtllm-engine",
            dry_run=True,
            triton={"model_repository_path": str(served_at)},
        )
    )
    metadata = storage.read_manifest(str(staging)).metadata
    # A stand-in for the engine llm.save writes, and the metadata of a real (not dry-run) H100 build.
    engine = staging / "tensorrt_llm" / "1" / "engine"
    engine.mkdir(parents=True)
    (engine / "rank0.engine").write_bytes(os.urandom(4096))
    (engine / "config.json").write_text('{"version": "1.2.1"}\n', encoding="utf-8")
    metadata.update(dry_run=False, gpu_arch="sm90")
    uri = s3_bucket.uri("runs/42/build")
    storage.publish_dir(staging, uri, "llmft.build", metadata)

    settings = KubernetesSettings(profile=preset_profiles("p5").build, s3_credentials_secret="s3-reader")
    rollout_config = RolloutConfig(repository=uri, target="kubernetes", kubernetes=settings)
    plan = plan_rollout(rollout_config, storage.require_complete(uri))
    pod = by_kind(build_manifests(plan))["Deployment"]["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert (
        fetch["volumeMounts"][0]["mountPath"]
        == str(served_at)
        == pod["containers"][0]["volumeMounts"][0]["mountPath"]
    )
    # The pod gets these from the Secret; here the test's environment points boto3 at the moto server.
    command = [sys.executable if word == "python" else word for word in fetch["command"]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr

    config_text = (served_at / "tensorrt_llm" / "config.pbtxt").read_text(encoding="utf-8")
    config = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    gpt_model_path = Path(config.parameters["gpt_model_path"].string_value)
    assert gpt_model_path == served_at / "tensorrt_llm" / "1" / "engine" == Path(metadata["engine_path"])
    assert (gpt_model_path / "rank0.engine").read_bytes() == (engine / "rank0.engine").read_bytes()
    for path in staging.rglob("*"):
        if path.is_file() and path.name != storage.MANIFEST_NAME:
            assert (served_at / path.relative_to(staging)).read_bytes() == path.read_bytes()
    assert storage.require_complete(str(served_at)).digest == plan.repository_digest


def test_fetch_entry_point_refuses_a_repository_without_manifest(s3_bucket, tmp_path: Path) -> None:
    storage.write_text(s3_bucket.uri("half/tensorrt_llm/config.pbtxt"), 'backend: "tensorrtllm"\n')
    target = tmp_path / "models"
    command = [
        sys.executable,
        "-m",
        "components.rollout.fetch_repository",
        s3_bucket.uri("half"),
        str(target),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert "cannot fetch the model repository" in done.stderr and "has no _MANIFEST.json" in done.stderr
    assert not target.exists()


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
        (ENGINE, {"size_to_engine": False}, "kubernetes.profile.gpus is 1"),
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
        plan_rollout(config().model_copy(update={"repository": "/data/build"}), manifest_of(HF))


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


def test_pod_report_names_a_failed_repository_fetch() -> None:
    fetch_failed = {
        "metadata": {"name": "p"},
        "status": {
            "initContainerStatuses": [
                {
                    "name": "fetch-repository",
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                }
            ],
            "containerStatuses": [
                {
                    "name": "tritonserver",
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "PodInitializing"}},
                }
            ],
        },
    }
    problems, crashed = pod_report(fetch_failed)
    assert crashed == "fetch-repository"  # its log tail ends the failure message
    assert any("fetch-repository exited with code 1" in line for line in problems)
    assert not any("PodInitializing" in line for line in problems)  # waiting for it is no problem
    # A fetch that finished is no problem either: the report is about tritonserver.
    fetched = {
        "metadata": {"name": "p"},
        "status": {
            "initContainerStatuses": [
                {"name": "fetch-repository", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
            ],
            "containerStatuses": [
                {
                    "name": "tritonserver",
                    "restartCount": 1,
                    "state": {"running": {}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                }
            ],
        },
    }
    problems, crashed = pod_report(fetched)
    assert crashed == "tritonserver" and not any("fetch-repository" in line for line in problems)


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
        storage.read_manifest(str(repository)),
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

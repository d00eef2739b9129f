"""Manifests under deploy/: valid YAML of the expected kinds, a Kyverno policy that matches the labels
and resource names pipelines/cluster.py writes on KFP task pods, and the rollout's RBAC (its Role is
checked against the calls the rollout really makes in tests/components/test_rollout_kubernetes.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from components.resources import EFA_LABEL, EFA_RESOURCE, PRIORITY_CLASS_LABEL, load_profiles
from pipelines.cluster import run_service_account

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
POLICY = DEPLOY / "kyverno-efa-policy.yaml"
K8S_VERSION = "1.30"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda path: path.name)
def test_manifests_parse_and_validate(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path.name} is empty"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            # Custom resources (Kyverno's ClusterPolicy) have no schema in kubernetes-validate.
            assert "." in doc["apiVersion"].split("/")[0], f"no schema for built-in kind {doc['kind']}"


def test_policy_kinds() -> None:
    kinds = [(doc["apiVersion"], doc["kind"]) for doc in documents(POLICY)]
    assert kinds == [("kyverno.io/v1", "ClusterPolicy"), ("rbac.authorization.k8s.io/v1", "ClusterRole")]


def rules() -> dict[str, dict[str, Any]]:
    policy = documents(POLICY)[0]
    assert policy["spec"]["background"] is False  # request.object is only there at admission
    # No autogen: the policy is for the bare pods Argo creates, not Deployments/Jobs we write ourselves.
    assert policy["metadata"]["annotations"]["pod-policies.kyverno.io/autogen-controllers"] == "none"
    return {rule["name"]: rule for rule in policy["spec"]["rules"]}


def matched_label(rule: dict[str, Any]) -> str:
    (match,) = rule["match"]["any"]
    resources = match["resources"]
    assert resources["kinds"] == ["Pod"] and resources["operations"] == ["CREATE"]
    (expression,) = resources["selector"]["matchExpressions"]
    assert expression["operator"] == "Exists"
    key: str = expression["key"]
    return key


def test_efa_rule_turns_the_label_into_main_container_limits() -> None:
    rule = rules()["efa-label-to-limits"]
    assert matched_label(rule) == EFA_LABEL
    label_value = f'{{{{ request.object.metadata.labels."{EFA_LABEL}" }}}}'
    (container,) = rule["mutate"]["patchStrategicMerge"]["spec"]["containers"]
    # KFP's driver names the user container "main" (Argo's convention).
    assert container["(name)"] == "main"
    assert container["resources"] == {
        "limits": {EFA_RESOURCE: label_value},
        "requests": {EFA_RESOURCE: label_value},
    }


def test_priority_rule_copies_the_priority_class() -> None:
    rule = rules()["priority-class-label-to-spec"]
    assert matched_label(rule) == PRIORITY_CLASS_LABEL
    (context,) = rule["context"]
    assert context["apiCall"]["urlPath"].endswith(f'labels."{PRIORITY_CLASS_LABEL}" }}}}')
    spec = rule["mutate"]["patchStrategicMerge"]["spec"]
    assert set(spec) == {"priorityClassName", "priority", "preemptionPolicy"}


def test_kyverno_can_read_priority_classes() -> None:
    role = documents(POLICY)[1]
    assert role["metadata"]["labels"]["rbac.kyverno.io/aggregate-to-admission-controller"] == "true"
    assert role["rules"][0]["resources"] == ["priorityclasses"]


def test_readme_profiles_example_loads(tmp_path: Path) -> None:
    """The profiles file shown in deploy/README.md is a valid override of the p5 preset."""
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Resource profiles file", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "profiles.yaml"
    path.write_text(example, encoding="utf-8")
    profiles = load_profiles(path)
    assert profiles.train.node_selector == {
        "node.kubernetes.io/instance-type": "p5.48xlarge",
        "karpenter.sh/nodepool": "p5",
    }
    assert profiles.export.gpus == 0 and profiles.export.node_selector == {}
    assert run_service_account(profiles) == "llmft-runner"


def test_rollout_rbac_grants_only_namespaced_rights_of_the_rollout() -> None:
    from components.rollout.cluster_api import API_CALLS

    docs = documents(DEPLOY / "rbac" / "rollout-rbac.yaml")
    assert [doc["kind"] for doc in docs] == ["ServiceAccount", "Role", "RoleBinding"]
    (role,) = [doc for doc in docs if doc["kind"] == "Role"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == set(API_CALLS)
    assert not any("*" in item for grant in granted for item in grant)  # no wildcards
    assert not {resource for _, resource, _ in granted} & {"secrets", "pods/exec", "pods/portforward"}

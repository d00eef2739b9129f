"""The few Kubernetes API calls the `kubernetes` rollout target makes, as plain JSON over the official client.

Objects travel as dicts both ways (no model classes), so nothing the server returns is dropped and the
manifests `manifests.py` builds are sent exactly as built. Updates are JSON merge patches
(`application/merge-patch+json`, RFC 7386): lists such as a pod's containers are replaced whole, so a
removed env var or volume really goes away, which the strategic merge patch the client picks by default
would not do.

`API_CALLS` lists every (API group, resource, verb) this module can send; deploy/rbac/rollout-rbac.yaml
grants exactly those, and tests/components/test_rollout_kubernetes.py checks both against the requests
the flows really make.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

# (connect, read) seconds per request: a hung connection must not hang the step. The client only honours
# an int or a tuple here (a float is silently ignored).
REQUEST_TIMEOUT: tuple[int, int] = (10, 60)
MERGE_PATCH = "application/merge-patch+json"
# Statuses worth retrying: the API server or a proxy in front of it was briefly unavailable.
TRANSIENT_STATUSES = frozenset({0, 408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class ResourceType:
    """A namespaced Kubernetes resource: where its REST paths are."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = f"{root}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment")
SERVICES = ResourceType("", "v1", "services", "Service")
HPAS = ResourceType("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler")
PODS = ResourceType("", "v1", "pods", "Pod")
BY_KIND = {kind.kind: kind for kind in (DEPLOYMENTS, SERVICES, HPAS, PODS)}

_MANAGED = ("get", "create", "patch", "delete")
API_CALLS: frozenset[tuple[str, str, str]] = frozenset(
    {(kind.group, kind.plural, verb) for kind in (DEPLOYMENTS, SERVICES, HPAS) for verb in _MANAGED}
    | {("", "pods", "list"), ("", "pods/log", "get")}
)


class KubernetesApiError(RuntimeError):
    """A Kubernetes API call failed; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status in TRANSIENT_STATUSES


def resource_of(obj: dict[str, Any]) -> ResourceType:
    kind = obj.get("kind", "")
    if kind not in BY_KIND:
        raise ValueError(f"no resource type for kind {kind!r}")
    return BY_KIND[kind]


class KubeApi:
    """Get, create, merge-patch, delete and list namespaced objects as dicts; read pod logs."""

    def __init__(self, api_client: k8s_client.ApiClient) -> None:
        self._client = api_client

    @classmethod
    def from_environment(cls) -> KubeApi:
        """In a pod: its service account (in-cluster config); elsewhere: the current kubeconfig context."""
        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            # The client reads $KUBECONFIG once, at import; read it now so the current value counts.
            k8s_config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        return cls(k8s_client.ApiClient())

    @classmethod
    def for_host(cls, host: str) -> KubeApi:
        """A client for an API server at `host` with no credentials (a local proxy, or a test server)."""
        return cls(k8s_client.ApiClient(k8s_client.Configuration(host=host)))

    def _call(
        self,
        verb: str,
        kind: ResourceType,
        method: str,
        path: str,
        what: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
        subresource: str | None = None,
    ) -> bytes:
        resource = f"{kind.plural}/{subresource}" if subresource else kind.plural
        # A call outside API_CALLS would be refused by the shipped Role: fail here, where it is obvious.
        if (kind.group, resource, verb) not in API_CALLS:
            raise AssertionError(f"{verb} {resource} is not in API_CALLS (and not granted by the Role)")
        try:
            response = self._client.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            raise _api_error(verb, what, error) from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise KubernetesApiError(f"cannot {verb} {what}: {type(error).__name__}: {error}", 0) from error
        data: bytes = response.data
        return data

    def get(self, kind: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None if there is none."""
        try:
            data = self._call("get", kind, "GET", kind.path(namespace, name), _what(kind, namespace, name))
        except KubernetesApiError as error:
            if error.status == 404:
                return None
            raise
        return _json(data)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind = resource_of(obj)
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        return _json(
            self._call("create", kind, "POST", kind.path(namespace), _what(kind, namespace, name), body=obj)
        )

    def merge_patch(
        self, kind: ResourceType, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        return _json(
            self._call(
                "patch",
                kind,
                "PATCH",
                kind.path(namespace, name),
                _what(kind, namespace, name),
                body=patch,
                content_type=MERGE_PATCH,
            )
        )

    def delete(self, kind: ResourceType, namespace: str, name: str) -> bool:
        """Delete the object (its dependents go in the background); False if there was none."""
        try:
            self._call(
                "delete",
                kind,
                "DELETE",
                kind.path(namespace, name),
                _what(kind, namespace, name),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except KubernetesApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    def list(
        self, kind: ResourceType, namespace: str, label_selector: dict[str, str]
    ) -> list[dict[str, Any]]:
        selector = ",".join(f"{key}={value}" for key, value in sorted(label_selector.items()))
        data = self._call(
            "list",
            kind,
            "GET",
            kind.path(namespace),
            f"{kind.plural} in namespace {namespace}",
            query=[("labelSelector", selector)],
        )
        items: list[dict[str, Any]] = _json(data).get("items") or []
        return items

    def pod_log(self, namespace: str, pod: str, container: str, tail_lines: int, limit_bytes: int) -> str:
        data = self._call(
            "get",
            PODS,
            "GET",
            PODS.path(namespace, pod, "log"),
            f"the log of pod {namespace}/{pod}",
            query=[
                ("container", container),
                ("tailLines", str(tail_lines)),
                ("limitBytes", str(limit_bytes)),
            ],
            subresource="log",
        )
        return data.decode("utf-8", errors="replace")


def _what(kind: ResourceType, namespace: str, name: str) -> str:
    return f"{kind.kind} {namespace}/{name}"


def _json(data: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(data) if data else {}
    return parsed


def _api_error(verb: str, what: str, error: ApiException) -> KubernetesApiError:
    status = int(error.status or 0)
    detail = error.reason or ""
    with contextlib.suppress(ValueError, AttributeError):  # a body that is not a Status object
        detail = json.loads(error.body or b"{}").get("message") or detail
    if status in (401, 403):
        return KubernetesApiError(
            f"not allowed to {verb} {what} ({status}: {detail}): the step's service account needs the Role "
            "in deploy/rbac/rollout-rbac.yaml in that namespace",
            status,
        )
    return KubernetesApiError(f"cannot {verb} {what}: {status} {detail}".rstrip(), status)

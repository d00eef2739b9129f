"""The `kubernetes` rollout target: apply a new revision, wait for it, smoke-test it, promote it, or undo it.

The flow (`rollout_kubernetes`):
1. Read the repository's manifest, resolve the image, the pods' profile and where the repository must
   sit in the pods (an engine's model_repository_path: copied there from S3 by an init container, or a
   PVC mounted there), and refuse an engine that cannot run there
   (`components.serving_compat.check_serving_compat`: TRT-LLM version of the image, GPU architecture
   of the node pool) before anything is applied.
2. Mark the model version `candidate` in the MLflow registry (promotion.py).
3. Apply the Service, the Deployment and the optional HPA (manifests.py) as one *revision*: a hash of
   all three. Each object carries what was applied (`llmft.io/last-applied`) and what it replaced
   (`llmft.io/previous-applied`, `llmft.io/previous-revision`), like kubectl's client-side apply. An
   object already at this revision is left alone, so a retried step re-applies nothing.
4. Wait until the Deployment controller has rolled the revision out: observedGeneration >= generation,
   updatedReplicas, availableReplicas and replicas all equal to spec.replicas (no old pod left behind
   the Service), with a timeout and bounded polling; the controller giving up
   (ProgressDeadlineExceeded) fails at once.
5. Smoke-test through the Service (smoke.py: health, generate with an answer check, infer over HTTP and
   gRPC, a gRPC stream).
6. Promote: alias `production` -> the version; the Deployment is marked `llmft.io/serving-revision`.

Any failure from step 3 on restores every object this rollout changed to what it replaced (a merge patch
back to the previous applied object; objects the revision created are deleted, one it removed is
re-created), tags the version rolled back, and fails the step with the reason and the restore's outcome.
A revision that had already passed (its serving-revision mark is set) is never undone by a later retry:
it is what serves.

Objects with the same name that llmft did not create are never taken over.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components import storage
from components.images import ImagesConfigError, load_images
from components.rollout.cluster_api import (
    DEPLOYMENTS,
    HPAS,
    PODS,
    SERVICES,
    KubeApi,
    KubernetesApiError,
    ResourceType,
    resource_of,
)
from components.rollout.manifests import (
    GRPC_PORT,
    HTTP_PORT,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    ManifestError,
    RepositoryFetch,
    ServingPlan,
    build_manifests,
    gpu_product_of,
    manifests_yaml,
    pinned_repository_path,
    pod_profile,
    release_name,
    repository_volume_size,
    revision_of,
    triton_launch,
    triton_repository_url,
)
from components.rollout.promotion import ModelRegistry
from components.rollout.smoke import smoke_test
from components.serving_compat import ServingCompatError, check_serving_compat
from components.tracking import NULL_TRACKER, Tracker

if TYPE_CHECKING:
    from components.rollout.rollout import RolloutConfig, RolloutResult

log = logging.getLogger(__name__)

LAST_APPLIED = "llmft.io/last-applied"
REVISION = "llmft.io/revision"
PREVIOUS_APPLIED = "llmft.io/previous-applied"
PREVIOUS_REVISION = "llmft.io/previous-revision"
SERVING_REVISION = "llmft.io/serving-revision"
# Annotations the apply step owns (compared and replaced along with the object's content).
BOOKKEEPING = (LAST_APPLIED, REVISION, PREVIOUS_APPLIED, PREVIOUS_REVISION)

MAX_API_ERRORS = 10  # consecutive transient API errors tolerated while waiting
SMOKE_READY_TIMEOUT_S = 60.0  # Service endpoints can lag the Deployment status by a few seconds
LOG_TAIL_LINES = 30
LOG_LIMIT_BYTES = 64 * 1024
MAX_POD_REPORTS = 5
# Waiting reasons that are no problem: a container being created, or one waiting for init containers.
STARTING_REASONS = (None, "ContainerCreating", "PodInitializing")


class KubernetesRolloutError(RuntimeError):
    """The rollout was refused, or failed (and the previous revision was restored); the message says why."""


# ---------------------------------------------------------------------------------------------------------
# Pure pieces: revision bookkeeping, merge-patch diffs, Deployment progress
# ---------------------------------------------------------------------------------------------------------


def merge_patch_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) turning `old` into `new`: changed keys, None for removed ones."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if key in old and before == value:
            continue
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch_diff(before, value)
            if nested:
                patch[key] = nested
        else:
            patch[key] = value
    return patch


def _compact(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def annotated(
    obj: dict[str, Any], revision: str, previous: dict[str, Any] | None, previous_revision: str | None
) -> dict[str, Any]:
    """`obj` with the bookkeeping annotations that let a later rollout or a retry undo it."""
    bookkeeping = {LAST_APPLIED: _compact(obj), REVISION: revision}
    if previous is not None and previous_revision is not None:
        bookkeeping[PREVIOUS_APPLIED] = _compact(previous)
        bookkeeping[PREVIOUS_REVISION] = previous_revision
    metadata = obj["metadata"]
    annotations = {**metadata.get("annotations", {}), **bookkeeping}
    return {**obj, "metadata": {**metadata, "annotations": annotations}}


def _annotations(live: dict[str, Any]) -> dict[str, str]:
    annotations: dict[str, str] = (live.get("metadata") or {}).get("annotations") or {}
    return annotations


def last_applied(live: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(_annotations(live)[LAST_APPLIED])
    return parsed


def applied_view(live: dict[str, Any]) -> dict[str, Any]:
    """What llmft last wrote to `live` (its last-applied object plus its bookkeeping annotations).

    Diffing against this, not against the live object, leaves alone what the API server and controllers
    added (defaults, status, other managers' annotations) and removes only what llmft itself set before.
    """
    applied = last_applied(live)
    bookkeeping = {key: value for key, value in _annotations(live).items() if key in BOOKKEEPING}
    metadata = applied["metadata"]
    return {
        **applied,
        "metadata": {**metadata, "annotations": {**metadata.get("annotations", {}), **bookkeeping}},
    }


def deployment_progress(deployment: dict[str, Any]) -> tuple[bool, str, str | None]:
    """(rolled out, a one-line state, why the controller gave up or None)."""
    metadata, spec = deployment.get("metadata") or {}, deployment.get("spec") or {}
    status = deployment.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    generation = int(metadata.get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    total = int(status.get("replicas") or 0)
    state = (
        f"generation {generation} observed {observed}; {updated}/{wanted} updated, "
        f"{available}/{wanted} available, {total} in total"
    )
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return False, state, condition.get("message") or "ProgressDeadlineExceeded"
    done = (
        generation > 0
        and observed >= generation
        and updated == wanted
        and available == wanted
        and total == wanted
    )
    return done, state, None


def pod_report(pod: dict[str, Any]) -> tuple[list[str], str | None]:
    """What keeps a pod from serving (scheduling, pulls, crashes), and a container whose log says why."""
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    problems: list[str] = []
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            why = condition.get("message") or condition.get("reason")
            problems.append(f"pod {name} unschedulable: {why}")
    crashed = None
    # Init containers too (the one fetching the repository fails before tritonserver ever starts), except
    # those that finished as they should.
    statuses = [
        container
        for container in status.get("initContainerStatuses") or []
        if ((container.get("state") or {}).get("terminated") or {}).get("exitCode") != 0
    ] + (status.get("containerStatuses") or [])
    for container in statuses:
        state = container.get("state") or {}
        last = (container.get("lastState") or {}).get("terminated")
        if "waiting" in state and state["waiting"].get("reason") not in STARTING_REASONS:
            waiting = state["waiting"]
            problems.append(
                f"pod {name} container {container.get('name')}: {waiting.get('reason')}: "
                f"{waiting.get('message', '')}".rstrip(": ")
            )
        if "terminated" in state or last:
            ended = state.get("terminated") or last
            problems.append(
                f"pod {name} container {container.get('name')} exited with code {ended.get('exitCode')} "
                f"({ended.get('reason', 'no reason')}), {container.get('restartCount', 0)} restart(s)"
            )
            crashed = container.get("name")
    return problems, crashed


# ---------------------------------------------------------------------------------------------------------
# Planning (no cluster)
# ---------------------------------------------------------------------------------------------------------


def plan_rollout(config: RolloutConfig, manifest: storage.Manifest) -> ServingPlan:
    """Resolve the settings against the repository (its manifest), and refuse an engine the image or GPUs
    cannot run."""
    settings, metadata = config.kubernetes, manifest.metadata
    try:
        profile = pod_profile(settings, metadata)
        repository_path = pinned_repository_path(metadata)
        triton_repository = triton_repository_url(config.repository, settings, repository_path)
        launch = triton_launch(metadata)
    except ManifestError as error:
        raise KubernetesRolloutError(str(error)) from error
    fetch = None
    if repository_path and not settings.pvc_claim:
        fetch = RepositoryFetch(
            source=config.repository,
            path=repository_path,
            image=settings.fetch_image or _base_image(),
            size_limit=repository_volume_size(manifest.total_size),
        )
    image = (
        settings.image
        or metadata.get("triton_image")
        or settings.default_image
        or load_images().for_family("trtllm")
    )
    try:
        check_serving_compat(metadata, image, gpu_product_of(profile))
    except ServingCompatError as error:
        raise KubernetesRolloutError(
            f"refusing to roll out {config.repository} with image {image} on GPU product "
            f"{gpu_product_of(profile)}: {error}"
        ) from error
    return ServingPlan(
        name=settings.name or release_name(config.registered_model_name or config.model_name),
        settings=settings,
        profile=profile,
        image=str(image),
        model_name=config.model_name,
        repository=config.repository,
        repository_digest=manifest.digest,
        triton_repository=triton_repository,
        repository_path=repository_path,
        fetch=fetch,
        launch=launch,
    )


def _base_image() -> str:
    try:
        return load_images().for_family("base")
    except ImagesConfigError as error:
        raise KubernetesRolloutError(
            f"the repository is copied into the Triton pods by an init container, whose image is "
            f"kubernetes.fetch_image, else the base image of the images file: {error}"
        ) from error


# ---------------------------------------------------------------------------------------------------------
# Talking to the cluster
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One object this revision changed, and what restoring it means."""

    kind: ResourceType
    namespace: str
    name: str
    previous: dict[str, Any] | None  # the previous revision's object as applied; None: it did not exist
    previous_revision: str | None
    removed: bool = False  # the new revision has no such object: it was deleted

    @property
    def what(self) -> str:
        return f"{self.kind.kind} {self.namespace}/{self.name}"


def _require_ours(live: dict[str, Any], what: str) -> None:
    labels = (live.get("metadata") or {}).get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or LAST_APPLIED not in _annotations(live):
        raise KubernetesRolloutError(
            f"{what} exists and was not created by llmft (no {MANAGED_BY_LABEL}={MANAGED_BY} label or no "
            f"{LAST_APPLIED} annotation); refusing to take it over: delete it or set kubernetes.name"
        )


def apply_revision(api: KubeApi, objects: list[dict[str, Any]], revision: str, changes: list[Change]) -> None:
    """Create or update every object to `revision`, appending what changed to `changes` as it goes
    (a partial failure leaves `changes` describing exactly what to undo)."""
    present = {resource_of(obj) for obj in objects}
    namespace, name = objects[0]["metadata"]["namespace"], objects[0]["metadata"]["name"]
    for obj in objects:
        kind = resource_of(obj)
        what = f"{kind.kind} {namespace}/{name}"
        live = api.get(kind, namespace, name)
        if live is None:
            api.create(annotated(obj, revision, None, None))
            log.info("created %s (revision %s)", what, revision)
            changes.append(Change(kind, namespace, name, None, None))
            continue
        _require_ours(live, what)
        annotations = _annotations(live)
        if annotations.get(REVISION) == revision:
            # Applied by an earlier attempt of this very rollout: nothing to send, but its record of what
            # it replaced still says how to undo it.
            previous = json.loads(annotations[PREVIOUS_APPLIED]) if PREVIOUS_APPLIED in annotations else None
            log.info("%s is already at revision %s", what, revision)
            changes.append(Change(kind, namespace, name, previous, annotations.get(PREVIOUS_REVISION)))
            continue
        previous, previous_revision = last_applied(live), annotations.get(REVISION, "unknown")
        patch = merge_patch_diff(applied_view(live), annotated(obj, revision, previous, previous_revision))
        api.merge_patch(kind, namespace, name, patch)
        log.info("updated %s from revision %s to %s", what, previous_revision, revision)
        changes.append(Change(kind, namespace, name, previous, previous_revision))
    # An object the previous revision had and this one does not (the HPA, when autoscaling was turned off).
    for kind in (SERVICES, DEPLOYMENTS, HPAS):
        if kind in present:
            continue
        live = api.get(kind, namespace, name)
        if live is None:
            continue
        _require_ours(live, f"{kind.kind} {namespace}/{name}")
        changes.append(
            Change(kind, namespace, name, last_applied(live), _annotations(live).get(REVISION), removed=True)
        )
        api.delete(kind, namespace, name)
        log.info("deleted %s/%s %s (not part of revision %s)", namespace, name, kind.kind, revision)


def restore(api: KubeApi, changes: list[Change]) -> list[str]:
    """Undo `changes`, newest first; return one line per object saying what was done (or failed)."""
    outcome: list[str] = []
    for change in reversed(changes):
        try:
            if change.previous is None:
                api.delete(change.kind, change.namespace, change.name)
                outcome.append(f"deleted {change.what} (created by the failed revision)")
                continue
            previous_revision = change.previous_revision or "unknown"
            restored = annotated(change.previous, previous_revision, None, None)
            live = api.get(change.kind, change.namespace, change.name)
            if live is None:
                api.create(restored)
                outcome.append(f"re-created {change.what} at revision {previous_revision}")
            else:
                api.merge_patch(
                    change.kind, change.namespace, change.name, merge_patch_diff(applied_view(live), restored)
                )
                outcome.append(f"restored {change.what} to revision {previous_revision}")
        except KubernetesApiError as error:
            outcome.append(f"could not restore {change.what}: {error}")
    return outcome


def pod_problems(api: KubeApi, plan: ServingPlan) -> list[str]:
    """Why the revision's pods do not serve, with the log tail of one that crashed; best effort."""
    try:
        pods = api.list(PODS, plan.namespace, plan.selector)
    except KubernetesApiError as error:
        return [f"(cannot list pods: {error})"]
    problems: list[str] = []
    crashed: tuple[str, str] | None = None
    for pod in pods[:MAX_POD_REPORTS]:
        lines, container = pod_report(pod)
        problems += lines
        if container and crashed is None:
            crashed = (pod["metadata"]["name"], container)
    if crashed:
        try:
            text = api.pod_log(plan.namespace, crashed[0], crashed[1], LOG_TAIL_LINES, LOG_LIMIT_BYTES)
            problems.append(f"last lines of pod {crashed[0]}:")
            problems += [f"  {line}" for line in text.splitlines()[-LOG_TAIL_LINES:]]
        except KubernetesApiError as error:
            problems.append(f"(cannot read the log of pod {crashed[0]}: {error})")
    return problems


def wait_rolled_out(
    api: KubeApi,
    plan: ServingPlan,
    timeout_s: float,
    poll_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Wait until the Deployment runs the new revision everywhere; return its final state line."""
    started = time.monotonic()
    deadline = started + timeout_s
    errors, last_state = 0, ""
    while True:
        try:
            deployment = api.get(DEPLOYMENTS, plan.namespace, plan.name)
            errors = 0
        except KubernetesApiError as error:
            errors += 1
            if not error.transient or errors >= MAX_API_ERRORS:
                raise
            log.warning("reading Deployment %s/%s failed (%s); retrying", plan.namespace, plan.name, error)
            deployment = {}
        if deployment is None:
            raise KubernetesRolloutError(
                f"Deployment {plan.namespace}/{plan.name} was deleted during the rollout"
            )
        if deployment:
            done, state, gave_up = deployment_progress(deployment)
            if state != last_state:
                log.info("Deployment %s/%s: %s", plan.namespace, plan.name, state)
                last_state = state
            if done:
                return state
            if gave_up:
                details = "\n".join(pod_problems(api, plan))
                raise KubernetesRolloutError(
                    f"Deployment {plan.namespace}/{plan.name} did not progress: {gave_up} ({state})\n"
                    f"{details}"
                )
        now = time.monotonic()
        if now >= deadline:
            details = "\n".join(pod_problems(api, plan))
            raise KubernetesRolloutError(
                f"Deployment {plan.namespace}/{plan.name} was not rolled out within {timeout_s:.0f} s "
                f"(kubernetes.timeout_s): {last_state or 'no status'}\n{details}".rstrip()
            )
        sleep(min(poll_s, max(deadline - now, 0.0)))


def service_urls(plan: ServingPlan) -> tuple[str, str]:
    """HTTP and gRPC addresses of the Service: the settings' overrides, else its cluster DNS name."""
    settings = plan.settings
    host = f"{plan.name}.{plan.namespace}.svc.{settings.cluster_domain}"
    return settings.http_url or f"http://{host}:{HTTP_PORT}", settings.grpc_url or f"{host}:{GRPC_PORT}"


# ---------------------------------------------------------------------------------------------------------
# The flow
# ---------------------------------------------------------------------------------------------------------


def _registry(config: RolloutConfig, tracker: Tracker) -> ModelRegistry | None:
    if not config.model_version:
        log.warning("no model_version given: the rollout will not move MLflow registry aliases")
        return None
    if not tracker.enabled or not tracker.tracking_uri:
        raise KubernetesRolloutError(
            f"model_version is {config.model_version!r} but MLflow tracking is off: promotion needs the "
            "registry (set mlflow_tracking_uri / MLFLOW_TRACKING_URI, or leave model_version unset)"
        )
    if not config.registered_model_name:
        raise KubernetesRolloutError("model_version is set but registered_model_name is not")
    return ModelRegistry(tracker.tracking_uri, config.registered_model_name, config.model_version)


def rollout_kubernetes(
    config: RolloutConfig, tracker: Tracker = NULL_TRACKER, api: KubeApi | None = None
) -> RolloutResult:
    """Run the flow in the module docstring; `api` defaults to the pod's (or kubeconfig's) cluster."""
    from components.rollout.rollout import RolloutResult

    manifest = storage.require_complete(config.repository)  # refuses a half-written repository
    plan = plan_rollout(config, manifest)
    objects = build_manifests(plan)
    revision = revision_of(objects)
    http_url, grpc_url = service_urls(plan)
    deployment = f"{plan.namespace}/{plan.name}"
    if config.dry_run:
        return RolloutResult(
            target="kubernetes",
            endpoint_http=http_url,
            endpoint_grpc=grpc_url,
            model_name=config.model_name,
            sample_prompt=config.smoke_prompt,
            deployment=deployment,
            revision=revision,
            manifests=manifests_yaml(objects),
            dry_run=True,
        )

    registry = _registry(config, tracker)
    api = api or KubeApi.from_environment()
    live = api.get(DEPLOYMENTS, plan.namespace, plan.name)
    if live is not None:
        _require_ours(live, f"Deployment {deployment}")  # before the registry is touched
    already_serving = live is not None and _annotations(live).get(SERVING_REVISION) == revision
    if registry and not already_serving:
        registry.mark_candidate()
    log.info(
        "rolling out %s as revision %s of %s (image %s)", config.repository, revision, deployment, plan.image
    )
    changes: list[Change] = []
    try:
        apply_revision(api, objects, revision, changes)
        state = wait_rolled_out(api, plan, plan.settings.timeout_s, plan.settings.poll_s)
        log.info("revision %s rolled out (%s); smoke-testing %s", revision, state, http_url)
        smoke = smoke_test(
            http_url,
            grpc_url,
            config.model_name,
            config.smoke_prompt,
            config.smoke_max_tokens,
            timeout_s=config.smoke_timeout_s,
            expect=config.smoke_expect,
            ready_timeout_s=SMOKE_READY_TIMEOUT_S,
        )
        previous = registry.promote(deployment) if registry else None
        if not already_serving:
            serving = {"metadata": {"annotations": {SERVING_REVISION: revision}}}
            api.merge_patch(DEPLOYMENTS, plan.namespace, plan.name, serving)
    except Exception as failure:  # any failure after the cluster was touched: undo it, then report
        ours = isinstance(failure, KubernetesRolloutError)
        reason = str(failure) if ours else f"{type(failure).__name__}: {failure}"
        if already_serving:
            # It passed before and serves: nothing of it is undone, in the cluster or in the registry.
            restored = [f"nothing restored: revision {revision} had already passed and serves"]
        else:
            restored = restore(api, changes) or ["nothing had been applied"]
        if registry and not already_serving:
            try:
                registry.mark_rolled_back(reason)
            except Exception as error:  # the cluster is what matters; the tag is a record
                restored.append(f"could not tag the model version rolled back: {error}")
        summary = "\n  ".join(restored)
        raise KubernetesRolloutError(
            f"rollout of revision {revision} to {deployment} failed: {reason}\nrestore:\n  {summary}"
        ) from failure
    result = RolloutResult(
        target="kubernetes",
        endpoint_http=http_url,
        endpoint_grpc=grpc_url,
        model_name=config.model_name,
        sample_prompt=config.smoke_prompt,
        sample_output=smoke.generate_output,
        stream_output=smoke.stream_output,
        healthy=True,
        deployment=deployment,
        revision=revision,
        promoted_version=config.model_version if registry else None,
        previous_production_version=previous,
    )
    log.info("%s", result.summary())
    return result

"""Promotion in the MLflow model registry: which model version is being rolled out, and which one serves.

export registers the merged checkpoint as a new version of the registered model. The rollout then moves
registry aliases along with the Deployment:

- before anything is applied: alias `candidate` -> the version (and tag `llmft.rollout=started`);
- after the new revision is available and passed its smoke test: alias `production` -> the version, the
  `candidate` alias removed, tags `llmft.rollout=promoted` and `llmft.deployment=<namespace>/<name>`;
- after a failure (the cluster restored to the previous revision): `candidate` removed, tags
  `llmft.rollout=rolled_back` and `llmft.rollout_error=<reason>`; `production` names the version that
  serves. (Should an earlier attempt of the same rollout have moved `production` already, and died
  before finishing, it is moved back to the version recorded in `llmft.replaced_production`.)

Every call is idempotent, so a retried step converges. Evaluate reads `production` to compare the next
tuned model with the one that serves (components/evaluate/production.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CANDIDATE_ALIAS = "candidate"
PRODUCTION_ALIAS = "production"
ROLLOUT_TAG = "llmft.rollout"
DEPLOYMENT_TAG = "llmft.deployment"
ERROR_TAG = "llmft.rollout_error"
REPLACED_TAG = "llmft.replaced_production"  # the version `production` named before this one ("none")
MAX_TAG_VALUE = 5000  # MLflow's limit on a model version tag value is 5000 characters


class RegistryError(RuntimeError):
    """The registry cannot be reached, or has no such registered model or version."""


def version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    """The ModelVersion `alias` names, or None when the registered model or the alias does not exist.

    MLflow reports a missing model as RESOURCE_DOES_NOT_EXIST but a missing alias as
    INVALID_PARAMETER_VALUE ("Registered model alias ... not found"); both mean "none".
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        missing_alias = error.error_code == "INVALID_PARAMETER_VALUE" and "not found" in error.message
        if error.error_code == "RESOURCE_DOES_NOT_EXIST" or missing_alias:
            return None
        raise


@dataclass(frozen=True)
class ModelRegistry:
    """One model version in the MLflow registry at `tracking_uri`."""

    tracking_uri: str
    name: str
    version: str

    def _client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _alias_version(self, alias: str) -> str | None:
        version = version_by_alias(self._client(), self.name, alias)
        return None if version is None else str(version.version)

    def production_version(self) -> str | None:
        """The version the `production` alias names, or None if none does."""
        return self._alias_version(PRODUCTION_ALIAS)

    def _tag(self, key: str, value: str) -> None:
        self._client().set_model_version_tag(self.name, self.version, key, value[:MAX_TAG_VALUE])

    def _drop_candidate(self) -> None:
        # Only our own candidate alias: a concurrent rollout of another version keeps its mark.
        if self._alias_version(CANDIDATE_ALIAS) == self.version:
            self._client().delete_registered_model_alias(self.name, CANDIDATE_ALIAS)

    def mark_candidate(self) -> None:
        """Check the version exists, then name it `candidate`."""
        from mlflow.exceptions import MlflowException

        try:
            self._client().get_model_version(self.name, self.version)
            self._client().set_registered_model_alias(self.name, CANDIDATE_ALIAS, self.version)
            self._tag(ROLLOUT_TAG, "started")
        except MlflowException as error:
            raise RegistryError(
                f"cannot mark version {self.version} of registered model {self.name!r} as {CANDIDATE_ALIAS} "
                f"at {self.tracking_uri}: {error.message}"
            ) from error
        log.info("MLflow: %s version %s is the %s", self.name, self.version, CANDIDATE_ALIAS)

    def promote(self, deployment: str) -> str | None:
        """Point `production` at the version; return the version it named before (None: none)."""
        previous = self.production_version()
        client = self._client()
        if previous == self.version:  # a retry: what it replaced was recorded the first time
            recorded = client.get_model_version(self.name, self.version).tags.get(REPLACED_TAG)
            previous = None if recorded in (None, "none") else recorded
        else:
            self._tag(REPLACED_TAG, previous or "none")
        client.set_registered_model_alias(self.name, PRODUCTION_ALIAS, self.version)
        self._drop_candidate()
        self._tag(ROLLOUT_TAG, "promoted")
        self._tag(DEPLOYMENT_TAG, deployment)
        log.info(
            "MLflow: %s version %s is %s (was %s)",
            self.name,
            self.version,
            PRODUCTION_ALIAS,
            f"version {previous}" if previous else "none",
        )
        return previous

    def mark_rolled_back(self, reason: str) -> None:
        """Record the failure; `production` goes back to what it named if this rollout had moved it."""
        client = self._client()
        if self.production_version() == self.version:
            replaced = client.get_model_version(self.name, self.version).tags.get(REPLACED_TAG)
            if replaced and replaced != "none":
                client.set_registered_model_alias(self.name, PRODUCTION_ALIAS, replaced)
            else:
                client.delete_registered_model_alias(self.name, PRODUCTION_ALIAS)
            log.info("MLflow: %s alias %s moved back to %s", self.name, PRODUCTION_ALIAS, replaced or "none")
        self._drop_candidate()
        self._tag(ROLLOUT_TAG, "rolled_back")
        self._tag(ERROR_TAG, reason)

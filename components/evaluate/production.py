"""The model that serves now: found through the MLflow registry's `production` alias.

Rollout points the alias at a model version once it served and passed its smoke test
(components/rollout/promotion.py); that version's source is the merged checkpoint export
wrote. Evaluate scores it on the same records as base and tuned, and the gate refuses a
tuned model that is worse than it by more than the tolerance (`decide_production_gate`).

When there is nothing to compare against, the gate does not block and the report says
why: no registered model name given, tracking off (no registry), no such registered
model, or no version holding the alias. A version that exists but cannot be read is an
error, not a pass: the comparison was asked for and could not be made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from components.rollout.promotion import PRODUCTION_ALIAS, version_by_alias

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProductionModel:
    """A registered model version and where its checkpoint lies."""

    name: str
    version: str
    alias: str
    source: str


@dataclass(frozen=True)
class ProductionLookup:
    """The production model, or why there is none to compare against."""

    model: ProductionModel | None
    note: str


def find_production(
    tracking_uri: str | None, registered_model_name: str | None, alias: str = PRODUCTION_ALIAS
) -> ProductionLookup:
    """Look up the version holding `alias`; `model` is None (with the reason in `note`) when there is none."""
    if not registered_model_name:
        return ProductionLookup(None, "no registered model name given: no comparison with production")
    if not tracking_uri:
        return ProductionLookup(
            None,
            f"MLflow tracking is off, so the registry cannot be asked which version of "
            f"{registered_model_name!r} is {alias}: no comparison with production",
        )
    from mlflow import MlflowClient

    client: Any = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = version_by_alias(client, registered_model_name, alias)
    if version is None:
        return ProductionLookup(
            None,
            f"no version of registered model {registered_model_name!r} holds alias {alias!r} "
            "(nothing has been promoted yet): no comparison with production",
        )
    model = ProductionModel(
        name=registered_model_name, version=str(version.version), alias=alias, source=str(version.source)
    )
    log.info("production model: %s version %s (%s)", model.name, model.version, model.source)
    return ProductionLookup(model, f"compared with {model.name} version {model.version} ({alias})")

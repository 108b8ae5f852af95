"""First-start work of the embedded mode: make sure a model is registered and active."""

from __future__ import annotations

from collections.abc import Iterator

from backend.config import Settings
from backend.db import session_scope
from backend.services import registry


def bootstrap_embedded(settings: Settings) -> Iterator[str]:
    """Yield human-readable lines describing what was done."""
    with session_scope(settings.resolved_database_url) as session:
        active = registry.active_version(session)
        if active is not None:
            yield f"active model: {active.version}"
            return
        starter = registry.starter_package_path()
        if starter is None:
            yield ("no model is active and no starter package is shipped: "
                   "segmentation jobs will fail until one is imported")
            return
        mv = registry.import_package(session, settings, starter, activate=True)
        yield f"registered and activated the starter model {mv.version} (phantom data only)"

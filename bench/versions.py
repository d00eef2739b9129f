"""Installed versions of the packages a benchmark's figures depend on, for its report."""

from __future__ import annotations

from importlib import metadata


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Each package's installed version, or "absent"."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found

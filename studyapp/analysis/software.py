"""Versions of the software that produced a result (stored with every analysis run and export)."""
from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable

# What a stored analysis run records: the statistics stack, by distribution name as pip knows it.
ANALYSIS_SOFTWARE = ("numpy", "scipy", "statsmodels", "gpboost", "pandas", "django", "scikit-learn")


def software_versions(packages: Iterable[str] = ANALYSIS_SOFTWARE, *,
                      missing: str | None = "not installed") -> dict[str, str | None]:
    """{"python": version, package: version, ...}; ``missing`` for a package that is not installed."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = missing
    return versions

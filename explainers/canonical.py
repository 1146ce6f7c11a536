"""Canonical JSON and its SHA-256: the same data always gives the same bytes and the same hash.

Torch-free on purpose: the web process hashes frozen study plans without loading PyTorch.
"""
from __future__ import annotations

import hashlib
import json


def canonical_json(data) -> str:
    """Sorted keys, no insignificant whitespace, no NaN, UTF-8 characters kept."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_sha256(data) -> str:
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()

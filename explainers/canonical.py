"""Canonical JSON and its SHA-256: the same data always gives the same bytes and the same hash.

Torch-free on purpose: the web process hashes frozen study plans without loading PyTorch.
``json_safe`` is the one conversion of numpy results to plain JSON (sanity reports, statistics
results, stored analysis runs).
"""
from __future__ import annotations

import hashlib
import json
import math
import uuid

import numpy as np


def canonical_json(data) -> str:
    """Sorted keys, no insignificant whitespace, no NaN, UTF-8 characters kept."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_sha256(data) -> str:
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()


def json_safe(value):
    """Plain JSON data: numpy scalars and arrays to Python, NaN and infinities to None (JSON has
    neither, and a stored result must stay valid JSON), UUIDs and dict keys to text."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, uuid.UUID):
        return str(value)
    return value

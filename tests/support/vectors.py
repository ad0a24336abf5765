"""The public Teltonika vectors in ``../shared/vectors`` beside the repository."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

VECTORS = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "vectors"
    / "teltonika_public.json"
)


@cache
def all_vectors() -> tuple[dict[str, Any], ...]:
    if not VECTORS.exists():
        raise FileNotFoundError(f"test vectors missing: {VECTORS}")
    return tuple(json.loads(VECTORS.read_text()))


def vector(vector_id: str) -> dict[str, Any]:
    for entry in all_vectors():
        if entry["id"] == vector_id:
            return entry
    raise KeyError(vector_id)


def frame(vector_id: str) -> bytes:
    return bytes.fromhex(vector(vector_id)["hex"])

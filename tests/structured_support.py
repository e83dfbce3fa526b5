"""Helpers shared by the structured-output tests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def grows(before: Any, after: Any) -> bool:
    """``after`` holds all ``before`` held, the same or longer (strings, lists, models)."""
    if isinstance(before, BaseModel):
        if not isinstance(after, type(before)):
            return False
        fields = before.model_fields_set
        return fields <= after.model_fields_set and all(
            grows(getattr(before, name), getattr(after, name)) for name in fields
        )
    if isinstance(before, str):
        return isinstance(after, str) and after.startswith(before)
    if isinstance(before, list):
        if not isinstance(after, list) or len(after) < len(before):
            return False
        return all(grows(old, new) for old, new in zip(before, after, strict=False))
    return before is None or before == after

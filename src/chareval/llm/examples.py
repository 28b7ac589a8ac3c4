"""Instances of a JSON schema made without a model: the mock provider's answers, and the stand-in
answers a dry run gives the stages so that they go on as they would."""

from __future__ import annotations

from typing import Any


def example(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> Any:
    """The smallest instance of a JSON schema (objects, arrays, enums, strings, numbers, booleans)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return example(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "enum" in schema:
        return schema["enum"][-1]
    if "const" in schema:
        return schema["const"]
    if "anyOf" in schema:
        return example(next((s for s in schema["anyOf"] if s.get("type") != "null"), schema["anyOf"][0]), defs)
    kind = schema.get("type")
    if kind == "object":
        return {name: example(sub, defs) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [
            example(schema.get("items", {}), defs)
            for _ in range(schema.get("minItems", 0) or (1 if schema.get("items") else 0))
        ]
    if kind == "string":
        return "mock text"[: schema.get("maxLength", 9)] or "x"
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    return None


def stand_in(schema: dict[str, Any]) -> Any:
    """What a capable model would answer, as far as the stages' control flow goes: the smallest
    instance, except that an open-ended list of lines at the top (a plan of context angles) gets 100
    distinct ones; the stage takes what it asked for, as it does from a real model."""
    value = example(schema)
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            items = sub.get("items", {})
            if sub.get("type") == "array" and "maxItems" not in sub and items.get("type") == "string":
                longest = items.get("maxLength", 120)
                value[name] = [f"stand-in {i + 1}"[:longest] for i in range(100)]
    return value

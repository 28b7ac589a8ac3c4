"""Prompt templates with {placeholders}: checked when the config loads (a stray brace or an unknown
name is a config error naming the key, not a crash mid-stage), filled when a stage runs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from string import Formatter

# What a rubric can say about the two sides of a conversation (filled from the conversation's
# Characters: the persona, the user persona and the context's user goal).
RUBRIC_FIELDS = (
    "assistant_name",
    "assistant_role",
    "assistant_boundaries",
    "assistant_voice",
    "user_name",
    "user_pressure",
    "user_faithful",
    "user_goal",
)


def placeholders(text: str) -> set[str]:
    """The names a template uses; ValueError on a stray or unclosed brace ({{ and }} are literal)."""
    names = set()
    for _, field, spec, conversion in Formatter().parse(text):
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise ValueError(f"'{{{field}}}' is not a plain placeholder (write {{{{ and }}}} for literal braces)")
        names.add(field)
    return names


def check(text: str, allowed: Iterable[str], required: Iterable[str] = ()) -> str:
    """A pydantic validator's body: the template is returned unchanged, or ValueError says what is wrong."""
    allowed, required = set(allowed), set(required)
    try:
        used = placeholders(text)
    except ValueError as e:
        raise ValueError(f"{e}; allowed placeholders: {_names(allowed)}") from None
    unknown = used - allowed
    if unknown:
        raise ValueError(
            f"unknown placeholder(s) {_names(unknown)}; allowed: {_names(allowed)} "
            "(write {{ and }} for literal braces)"
        )
    missing = required - used
    if missing:
        raise ValueError(f"must contain the placeholder(s) {_names(missing)}")
    return text


def fill(text: str, values: Mapping[str, object]) -> str:
    return text.format_map(values)


def _names(names: Iterable[str]) -> str:
    return ", ".join("{" + n + "}" for n in sorted(names)) or "none"

"""Keys never reach a file, a record, a span or the console, even when a server echoes them back.

Requests carry no key (the provider adds it when sending), but an error text is the server's own
words: proxies and self-hosted servers answer a 401 with `invalid x-api-key: sk-ant-…`. So every
error text is redacted where chareval makes its errors (CharevalError), where it writes an error
(records, tags, traces) and in every log handler: the value of every key variable chareval read or
that looks like one, and anything shaped like a provider's key."""

from __future__ import annotations

import os
import re

REDACTED = "[redacted]"
_MIN_SECRET = 8  # shorter values (a test's "x") would redact ordinary words
# Anthropic (sk-ant-…), OpenRouter (sk-or-v1-…), OpenAI-style (sk-…), Together (tgp_v1_…), bearer tokens.
_KEY_SHAPES = re.compile(
    r"\bsk-[A-Za-z0-9_\-]{16,}|\btgp_v1_[A-Za-z0-9_\-]{16,}|(?i:bearer)\s+[A-Za-z0-9._\-~+/]{16,}=*"
)
_KEY_NAMES = re.compile(r"(API_KEY|_TOKEN|_SECRET|PASSWORD)$")
_read_keys: set[str] = set()  # variables chareval read a key from (a provider's api_key_env can be any name)


def note_secret_env(name: str) -> None:
    _read_keys.add(name)


def _secret_values() -> list[str]:
    names = _read_keys | {name for name in os.environ if _KEY_NAMES.search(name)}
    values = {os.environ.get(name) or "" for name in names}
    return sorted((v for v in values if len(v) >= _MIN_SECRET), key=len, reverse=True)


def redact_text(text: str) -> str:
    if not text:
        return text
    for value in _secret_values():
        if value in text:
            text = text.replace(value, REDACTED)
    return _KEY_SHAPES.sub(REDACTED, text)

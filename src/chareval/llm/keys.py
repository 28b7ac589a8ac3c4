"""API keys and endpoints from the environment (or a git-ignored .env). Keys are read here and
handed to the SDK client only: never stored in a config, record, param, tag or log line."""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values

from chareval.config import Models
from chareval.errors import ConfigError

KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openrouter": "OPENROUTER_API_KEY", "together": "TOGETHER_API_KEY"}
BASE_URL_ENV = {"anthropic": "ANTHROPIC_BASE_URL", "openrouter": "OPENROUTER_BASE_URL", "together": "TOGETHER_BASE_URL"}
DEFAULT_BASE_URL = {
    "anthropic": "https://api.anthropic.com",
    "openrouter": "https://openrouter.ai/api/v1",
    "together": "https://api.together.xyz/v1",
}


def load_env_file(root: str | Path) -> None:
    """Read <root>/.env; variables already set (non-empty) in the environment win."""
    for name, value in dotenv_values(Path(root) / ".env").items():
        if value is not None and not os.environ.get(name):
            os.environ[name] = value


def base_url(provider: str, configured: str | None) -> str:
    """Config beats <PROVIDER>_BASE_URL beats the public endpoint."""
    return configured or os.environ.get(BASE_URL_ENV.get(provider, ""), "") or DEFAULT_BASE_URL[provider]


def api_key(provider: str, env_name: str | None = None) -> str | None:
    name = env_name or KEY_ENV.get(provider)
    return os.environ.get(name) if name else None


def providers_used(models: Models, needs: dict[str, str]) -> dict[str, list[str]]:
    """provider -> what needs it; `needs` maps a config key (models.user) to its model."""
    used: dict[str, list[str]] = {}
    for why, model in needs.items():
        for m, reason in ((model, why), (models.fallback.get(model), f"fallback of {why}")):
            if m:
                used.setdefault(m.split("/", 1)[0], []).append(reason)
    return used


def require_keys(models: Models, needs: dict[str, str]) -> None:
    """Fail before any work when a selected provider has no key."""
    missing = []
    for provider, why in providers_used(models, needs).items():
        if provider in KEY_ENV and not api_key(provider):
            missing.append(f"{KEY_ENV[provider]} (needed by {', '.join(why)})")
    if missing:
        raise ConfigError(
            "missing API key: " + "; ".join(missing),
            "export it in the shell or put it in .env at the project root (git ignores .env); "
            "or use models=local to run offline",
        )

"""API keys and endpoints from the environment (or a git-ignored .env). Keys are read here and
handed to the SDK client only: never stored in a config, record, param, tag or log line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from chareval.errors import ConfigError
from chareval.secrets import note_secret_env


def load_env_file(root: str | Path) -> None:
    """Read <root>/.env; variables already set (non-empty) in the environment win."""
    for name, value in dotenv_values(Path(root) / ".env").items():
        if value is not None and not os.environ.get(name):
            os.environ[name] = value


def api_key(env_name: str | None) -> str | None:
    if not env_name:
        return None
    note_secret_env(env_name)  # its value is redacted from every error text and log line from now on
    return os.environ.get(env_name)


@dataclass(frozen=True)
class Endpoint:
    """A hosted API's key variable, base-URL variable and public URL."""

    key_env: str | None
    base_url_env: str | None
    default_url: str | None

    def base_url(self, configured: str | None) -> str | None:
        """Config beats <NAME>_BASE_URL beats the public endpoint."""
        return configured or (os.environ.get(self.base_url_env) if self.base_url_env else None) or self.default_url

    def require_key(self, needed_by: str) -> None:
        if self.key_env and not api_key(self.key_env):
            raise ConfigError(
                f"missing API key: {self.key_env} (needed by {needed_by})",
                "export it in the shell or put it in .env at the project root (git ignores .env)",
            )


# Together serves fine-tuned models (llm/providers/together.py) and runs the fine-tuning jobs
# (finetune/together_backend.py): one set of facts for both.
TOGETHER = Endpoint("TOGETHER_API_KEY", "TOGETHER_BASE_URL", "https://api.together.xyz/v1")

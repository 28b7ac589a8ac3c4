"""On-disk cache of completed model calls: JSON files keyed by a hash of everything that
determines the answer. Errors are never stored; an unreadable entry is a miss."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from chareval.io import write_text_atomic
from chareval.llm.base import LLMRequest, LLMResponse

log = logging.getLogger(__name__)


class DiskCache:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @staticmethod
    def key(identity: dict[str, Any], request: LLMRequest) -> str:
        payload = json.dumps(
            {"provider": identity, "request": request.wire_params()}, sort_keys=True, ensure_ascii=False
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> LLMResponse | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return LLMResponse.model_validate_json(path.read_text(encoding="utf-8"))
        except (ValidationError, OSError, UnicodeDecodeError):
            log.warning("ignoring a corrupt cache entry %s", path)
            return None

    def put(self, key: str, response: LLMResponse) -> None:
        # `parsed` is rebuilt from the text on a hit, so it is not stored.
        write_text_atomic(self._path(key), response.model_dump_json(exclude={"parsed", "cached"}))

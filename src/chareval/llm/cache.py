"""On-disk cache of completed model calls: JSON files keyed by a hash of everything that
determines the answer, each holding the response and its checksum. Errors are never stored; an
unreadable entry, or one that does not match its checksum (edited by hand), is a miss. The cache is
best-effort: a failed write is a warning, never the loss of an answer that was paid for."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from chareval.io import write_text_atomic
from chareval.llm.base import LLMRequest, LLMResponse

log = logging.getLogger(__name__)


class DiskCache:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._write_failed = False
        self._lock = threading.Lock()  # conversations write from several threads

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
            entry = json.loads(path.read_text(encoding="utf-8"))
            text = entry["response"]
            if hashlib.sha256(text.encode()).hexdigest() != entry["sha256"]:
                log.warning("cache entry %s does not match its checksum (edited?): asking the model again", path)
                return None
            return LLMResponse.model_validate_json(text)
        except (ValueError, KeyError, TypeError, OSError):  # JSON and pydantic errors are ValueErrors
            log.warning("ignoring a corrupt cache entry %s", path)
            return None

    def put(self, key: str, response: LLMResponse) -> None:
        # `parsed` is rebuilt from the text on a hit, so it is not stored.
        text = response.model_dump_json(exclude={"parsed", "cached"})
        entry = json.dumps({"sha256": hashlib.sha256(text.encode()).hexdigest(), "response": text})
        try:
            # Not fsynced: an entry lost to a power cut is asked again, and the fsync would hold up
            # the conversation turn that wrote it by milliseconds.
            write_text_atomic(self._path(key), entry, durable=False)
        except OSError as e:
            with self._lock:  # warn once: every later write fails the same way
                first, self._write_failed = not self._write_failed, True
            if first:
                log.warning(
                    "cannot write to the cache %s (%s): answers are kept in the outputs, not cached",
                    self.directory,
                    e.strerror or e,
                )

"""The registry of fine-tuned models: a JSONL file of FineTunedModel records (latest per key wins),
at paths.registry. Later stages resolve models.assistant=local_lora/<name> through it, and the MLflow
run of each job carries the same facts as params and tags."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chareval.errors import ConfigError
from chareval.io import read_records_jsonl, write_jsonl_atomic
from chareval.schemas import FineTunedModel

_lock = threading.Lock()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def job_key(train_sha: str, settings: dict[str, Any]) -> str:
    payload = json.dumps({"train": train_sha, "settings": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class Catalog:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def all(self) -> list[FineTunedModel]:
        if not self.path.exists():
            return []
        latest: dict[str, FineTunedModel] = {}
        for record in read_records_jsonl(self.path, FineTunedModel):
            latest[record.key] = record
        return list(latest.values())

    def find(self, key: str) -> FineTunedModel | None:
        return next((r for r in self.all() if r.key == key), None)

    def by_name(self, name: str) -> FineTunedModel:
        found = [r for r in self.all() if r.name == name]
        if not found:
            known = ", ".join(sorted(r.name for r in self.all() if r.model)) or "none yet"
            raise ConfigError(
                f"no fine-tuned model named '{name}' in {self.path} (known: {known})", "run stage=finetune first"
            )
        return found[-1]

    def save(self, record: FineTunedModel) -> FineTunedModel:
        """Insert or replace the record with the same key (the file is rewritten atomically)."""
        record = record.model_copy(update={"updated_at": now()})
        with _lock:
            rows = [r for r in self.all() if r.key != record.key] + [record]
            write_jsonl_atomic(self.path, [r.model_dump(mode="json") for r in rows])
        return record

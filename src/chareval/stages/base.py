"""What every stage gets and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chareval.config import AppConfig
from chareval.llm import LLMClient
from chareval.tracking import StageRun


@dataclass
class StageContext:
    settings: AppConfig
    run_dir: Path
    client: LLMClient
    run: StageRun


@dataclass
class StageResult:
    # name -> file; logged as artifacts and handed to the next stage of a pipeline.
    outputs: dict[str, Path]
    metrics: dict[str, float] = field(default_factory=dict)
    summary: str = ""

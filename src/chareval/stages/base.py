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


def progress(ctx: StageContext, errors: int) -> dict[str, object]:
    """What a progress bar shows beside done/total."""
    total = ctx.client.meter.total()
    return {"errors": errors, "tokens": total.input_tokens + total.output_tokens, "cost": f"${total.cost_usd:.4f}"}


@dataclass
class StageResult:
    # name -> file; logged as artifacts and handed to the next stage of a pipeline.
    outputs: dict[str, Path]
    metrics: dict[str, float] = field(default_factory=dict)
    summary: str = ""
    # Set when the stage wrote everything but must still fail (e.g. the judges' error budget).
    failure: str | None = None

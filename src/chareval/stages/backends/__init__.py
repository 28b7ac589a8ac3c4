"""Fine-tuning backends: each module here runs one backend's jobs for stage=finetune and registers
it in BACKENDS with its settings class (finetune=<file> in conf/finetune/ picks it by `backend:`)
and the API key it needs, checked before any work. A new backend = its module + its YAML."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chareval.config import FinetuneSettings
from chareval.plugins import Registry
from chareval.remote.keys import Endpoint
from chareval.schemas import FineTunedModel
from chareval.stages.base import StageContext


@dataclass(frozen=True)
class Backend:
    settings: type[FinetuneSettings]  # finetune.* when this backend is selected
    # The job: train (or start and follow) on the file, record the model in the catalog; returns it
    # and the stage's metrics. The file is None only when job_id= follows a job started elsewhere.
    run: Callable[[StageContext, Path | None], tuple[FineTunedModel, dict[str, float]]]
    endpoint: Endpoint | None = None  # a hosted API: its key is checked before any work


BACKENDS: Registry[Backend] = Registry(
    "fine-tuning backend",
    "chareval.stages.backends",
    fix="finetune=<a file of conf/finetune/> whose backend: names a module of chareval/stages/backends",
)


def key_settings(ctx: StageContext) -> dict:
    """The settings that make a different job (how it is followed or computed does not)."""
    return ctx.settings.finetune.model_dump(
        mode="json", exclude={"wait", "poll_interval_s", "device", "gradient_checkpointing"}
    )

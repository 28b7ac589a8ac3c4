"""stage=finetune: a fine-tuning JSONL -> a fine-tuned model, recorded in MLflow and in the registry
of fine-tuned models (paths.registry) so that later stages can use it as models.assistant."""

from __future__ import annotations

import logging
from pathlib import Path

from chareval.io import write_text_atomic
from chareval.schemas import JOB_FAILED
from chareval.stages.backends import BACKENDS
from chareval.stages.base import STAGES, InputSpec, Stage, StageContext, StageResult
from chareval.store import names

log = logging.getLogger(__name__)


def run(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    record, metrics = BACKENDS.get(ctx.settings.finetune.backend).run(ctx, inputs.get("finetune"))
    ctx.mlflow.set_tags(
        {
            f"finetune.{k}": v
            for k, v in {
                "backend": record.backend,
                "base_model": record.base_model,
                "status": record.status,
                "model": record.model,
                "job_id": record.job_id,
                "file_id": record.file_id,
            }.items()
            if v
        }
    )
    job_file = ctx.run_dir / names.FINETUNE_JOB
    write_text_atomic(job_file, record.model_dump_json(indent=2) + "\n")
    outputs = {"finetune_job": job_file}
    if record.adapter_path:
        outputs["adapter"] = Path(record.adapter_path)
    failure = (
        f"fine-tuning job {record.job_id} ended '{record.status}': {record.events[-1] if record.events else ''}"
        if record.status in JOB_FAILED
        else None
    )
    summary = (
        f"fine-tuned model {record.model}" if record.model else f"fine-tuning job {record.job_id}: {record.status}"
    )
    return StageResult(
        outputs=outputs,
        metrics=metrics,
        summary=f"{summary} (registry: {ctx.settings.paths.registry})",
        failure=failure,
    )


STAGE = STAGES.register(
    "finetune",
    Stage(  # its knobs are the finetune group (a backend of stages/backends)
        run,
        InputSpec("finetune", "train_file", "prepare_run", names.FINETUNE_DATA, unless="job_id"),
        writes=(names.FINETUNE_JOB, names.ADAPTER),
    ),
)

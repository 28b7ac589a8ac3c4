"""stage=finetune: a fine-tuning JSONL -> a fine-tuned model, recorded in MLflow and in the registry
of fine-tuned models (paths.registry) so that later stages can use it as models.assistant."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from chareval.io import write_text_atomic
from chareval.schemas import JOB_FAILED
from chareval.stages.backends import BACKENDS
from chareval.stages.base import STAGES, InputSpec, Stage, StageContext, StageResult
from chareval.store import names

log = logging.getLogger(__name__)


def run(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    if ctx.client.planner is not None:
        return planned(ctx, inputs.get("finetune"))
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


def planned(ctx: StageContext, train_file: Path | None) -> StageResult:
    """dry_run=true: the job it would start, counted, and a stand-in model for the stages after it
    (the closed loop's tuned student), whose calls the plan counts as uncached."""
    assert ctx.client.planner is not None
    backend = ctx.settings.finetune.backend
    examples = sum(1 for line in train_file.open(encoding="utf-8") if line.strip()) if train_file else 0
    ctx.client.planner.finetune_jobs.append({"backend": backend, "examples": examples})
    job_file = ctx.run_dir / names.FINETUNE_JOB
    # The backend's name is the provider that serves its models (local_lora/<name>, together/<name>).
    write_text_atomic(job_file, json.dumps({"model": f"{backend}/dry-run-tuned", "status": "dry_run"}) + "\n")
    return StageResult(
        outputs={"finetune_job": job_file}, summary=f"would fine-tune on {examples} examples ({backend})"
    )

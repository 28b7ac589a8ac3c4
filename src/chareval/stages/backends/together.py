"""finetune=together_qwen3_32b: a Together fine-tuning job (chareval.finetune.together_backend),
uploaded once per file and settings, followed to its end, served as together/<output name>."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chareval.config import TogetherSettings
from chareval.errors import InputError
from chareval.io import file_sha256
from chareval.remote.keys import TOGETHER
from chareval.remote.retry import RefusedError
from chareval.schemas import JOB_FAILED, JOB_FINISHED, FineTunedModel
from chareval.stages.backends import BACKENDS, Backend, key_settings
from chareval.stages.base import StageContext
from chareval.tuned.catalog import Catalog, job_key, now

if TYPE_CHECKING:
    from chareval.finetune.together_backend import TogetherFinetuner

log = logging.getLogger(__name__)


def _unowned(record: FineTunedModel | None) -> FineTunedModel | None:
    return record if record is not None and record.account is None else None


def _start_job(
    ctx: StageContext, tuner: TogetherFinetuner, registry: Catalog, train_file: Path, key: str, sha: str
) -> FineTunedModel:
    """Upload the file(s), create the job and register it under this account."""
    from chareval.finetune.together_backend import status_of

    f = ctx.knobs("finetune", TogetherSettings)
    file_id = tuner.upload(train_file)
    validation_id = tuner.upload(Path(f.validation_file)) if f.validation_file else None
    job = tuner.create(file_id, validation_id)
    return registry.save(
        FineTunedModel(
            key=key,
            backend="together",
            base_model=f.base_model,
            name=job.id,
            status=status_of(job),
            job_id=job.id,
            file_id=file_id,
            train_file=str(train_file),
            train_file_sha256=sha,
            settings=key_settings(ctx),
            mlflow_run_id=ctx.mlflow.run_id,
            account=tuner.account,
            created_at=now(),
            updated_at=now(),
        )
    )


def run(ctx: StageContext, train_file: Path | None) -> tuple[FineTunedModel, dict[str, float]]:
    from chareval.finetune.together_backend import (
        TogetherFinetuner,
        check_before_upload,
        status_of,
    )

    s, f = ctx.settings, ctx.knobs("finetune", TogetherSettings)
    registry = Catalog(s.paths.registry)
    tuner = TogetherFinetuner(f, s.models.retry)
    record: FineTunedModel | None
    if s.job_id:
        record = next((r for r in registry.all() if r.job_id == s.job_id), None) or FineTunedModel(
            key=f"job:{s.job_id}",
            backend="together",
            base_model=f.base_model,
            name=s.job_id,
            status="unknown",
            job_id=s.job_id,
            train_file="(started elsewhere)",
            train_file_sha256="",
            settings=key_settings(ctx),
            created_at=now(),
            updated_at=now(),
        )
    else:
        if train_file is None:  # the runner resolves the input whenever job_id is unset
            raise InputError(
                "stage=finetune has no fine-tuning file", "pass train_file=<finetune.jsonl> or job_id=<job>"
            )
        check_before_upload(train_file, f.context_length, f.training_method)
        if f.validation_file:
            check_before_upload(Path(f.validation_file), f.context_length, f.training_method)
        sha = file_sha256(train_file)
        settings = key_settings(ctx)
        key = job_key(sha, settings | {"account": tuner.account})
        # A registry entry made before accounts were recorded is found by file and settings alone.
        record = registry.find(key) or _unowned(registry.find(job_key(sha, settings)))
        if record and record.job_id and record.status not in JOB_FAILED:
            log.info("found the job for this file and these settings: %s (%s)", record.job_id, record.status)
        else:
            record = _start_job(ctx, tuner, registry, train_file, key, sha)

    def show(job: Any, new_events: list[str]) -> None:
        for line in new_events:
            log.info("  %s", line)
        progress = getattr(job, "progress", None)
        eta = f", about {progress.seconds_remaining} s left" if progress and progress.estimate_available else ""
        log.info("job %s: %s%s", job.id, status_of(job), eta)

    assert record is not None and record.job_id is not None  # found, or saved just above
    try:
        job, events = tuner.follow(record.job_id, wait=f.wait, on_update=show)
    except RefusedError as e:
        if e.status != 404 or s.job_id or train_file is None:
            raise
        log.warning(
            "Together knows no job %s for this key and endpoint (404: the registry entry was made with another"
            " account or TOGETHER_BASE_URL); starting a new job",
            record.job_id,
        )
        sha = record.train_file_sha256
        key = job_key(sha, key_settings(ctx) | {"account": tuner.account})
        record = _start_job(ctx, tuner, registry, train_file, key, sha)
        assert record.job_id is not None
        job, events = tuner.follow(record.job_id, wait=f.wait, on_update=show)
    status = status_of(job)
    output = getattr(job, "x_model_output_name", None)
    record = registry.save(
        record.model_copy(
            update={
                "status": status,
                "events": events,
                "name": output or record.name,
                "model": f"together/{output}" if output and status == "completed" else None,
            }
        )
    )
    if not f.wait and status not in JOB_FINISHED:
        log.info(
            "not waiting: follow it later with python src/run.py stage=finetune finetune=together_qwen3_32b job_id=%s",
            record.job_id,
        )
    return record, {"finetune.completed": float(status == "completed"), "finetune.events": len(events)}


BACKEND = BACKENDS.register("together", Backend(TogetherSettings, run, TOGETHER))

"""stage=finetune: a fine-tuning JSONL -> a fine-tuned model, recorded in MLflow and in the registry
of fine-tuned models (paths.registry) so that later stages can use it as models.assistant."""

from __future__ import annotations

import logging
from pathlib import Path

from chareval.config import LocalLoraSettings, TogetherSettings
from chareval.errors import InputError
from chareval.finetune.data_format import check_kind, validate_file
from chareval.io import file_sha256, write_text_atomic
from chareval.remote.retry import RefusedError
from chareval.schemas import JOB_FAILED, JOB_FINISHED, FineTunedModel
from chareval.stages.base import StageContext, StageResult
from chareval.store import names
from chareval.tuned.catalog import Catalog, job_key, now

log = logging.getLogger(__name__)


def run(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    if ctx.settings.finetune.backend == "local_lora":
        record, metrics = run_local_lora(ctx, inputs["finetune"])
    else:
        record, metrics = run_together(ctx, inputs.get("finetune"))
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


def _key_settings(ctx: StageContext) -> dict:
    """The settings that make a different job (how it is followed or computed does not)."""
    return ctx.settings.finetune.model_dump(
        mode="json", exclude={"wait", "poll_interval_s", "device", "gradient_checkpointing"}
    )


def run_local_lora(ctx: StageContext, train_file: Path) -> tuple[FineTunedModel, dict[str, float]]:
    from chareval.finetune.local_dpo import train_dpo
    from chareval.finetune.local_lora import train
    from chareval.llm.providers.local import gguf_of

    s, f = ctx.settings, ctx.knobs("finetune", LocalLoraSettings)
    kind = "preference" if f.training_method == "dpo" else "sft"
    check_kind(train_file, kind, f"finetune=local_lora finetune.training_method={f.training_method}")
    report = validate_file(train_file, kind=kind)
    if not report.ok:
        raise InputError(f"the fine-tuning file is not valid:\n{report.describe()}", "rerun stage=prepare")
    registry = Catalog(s.paths.registry)
    sha = file_sha256(train_file)
    key = job_key(sha, _key_settings(ctx))
    existing = registry.find(key)
    if existing and existing.status == "completed" and existing.adapter_path and Path(existing.adapter_path).is_dir():
        log.info("this file and these settings were trained already: %s", existing.model)
        return existing, {"train.reused": 1}
    gguf = gguf_of(f.base_model, s.models)
    name = "-".join(p for p in (s.persona.name, key[:8], f.suffix) if p)
    if f.training_method == "dpo":

        def dpo_step(step: int, values: dict[str, float]) -> None:
            ctx.mlflow.log_metric_at("train.loss", values["loss"], step)
            if "rewards/margins" in values:
                ctx.mlflow.log_metric_at("train.reward_margin", values["rewards/margins"], step)
            log.info(
                "DPO step %d: loss %.3f, reward margin %.3f", step, values["loss"], values.get("rewards/margins", 0)
            )

        result = train_dpo(
            f, gguf, train_file, ctx.run_dir, seed=s.seed, cache_dir=Path(s.paths.cache), on_step=dpo_step
        )
    else:
        result = train(
            f,
            gguf,
            train_file,
            ctx.run_dir,
            seed=s.seed,
            cache_dir=Path(s.paths.cache),
            on_step=lambda step, loss: ctx.mlflow.log_metric_at("train.loss", loss, step),
        )
    record = registry.save(
        FineTunedModel(
            key=key,
            backend="local_lora",
            base_model=f.base_model,
            name=name,
            model=f"local_lora/{name}",
            status="completed",
            train_file=str(train_file),
            train_file_sha256=sha,
            settings=_key_settings(ctx)
            | {"base_gguf": str(gguf), "device_used": result.device, "hf_base": str(result.base_folder)},
            adapter_path=str(result.adapter_dir),
            gguf_adapter_path=str(result.gguf_adapter) if result.gguf_adapter else None,
            mlflow_run_id=ctx.mlflow.run_id,
            created_at=now(),
            updated_at=now(),
        )
    )
    log.info("loss %.3f -> %.3f over %d steps", result.losses[0], result.losses[-1], len(result.losses))
    return record, {
        "train.examples": result.examples,
        "train.truncated_examples": result.truncated,
        "train.lengthened_examples": result.lengthened,
        "train.steps": len(result.losses),
        "train.first_loss": result.losses[0],
        "train.final_loss": result.losses[-1],
    }


def _unowned(record: FineTunedModel | None) -> FineTunedModel | None:
    return record if record is not None and record.account is None else None


def _start_job(ctx: StageContext, tuner, registry: Catalog, train_file: Path, key: str, sha: str) -> FineTunedModel:
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
            settings=_key_settings(ctx),
            mlflow_run_id=ctx.mlflow.run_id,
            account=tuner.account,
            created_at=now(),
            updated_at=now(),
        )
    )


def run_together(ctx: StageContext, train_file: Path | None) -> tuple[FineTunedModel, dict[str, float]]:
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
            settings=_key_settings(ctx),
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
        settings = _key_settings(ctx)
        key = job_key(sha, settings | {"account": tuner.account})
        # A registry entry made before accounts were recorded is found by file and settings alone.
        record = registry.find(key) or _unowned(registry.find(job_key(sha, settings)))
        if record and record.job_id and record.status not in JOB_FAILED:
            log.info("found the job for this file and these settings: %s (%s)", record.job_id, record.status)
        else:
            record = _start_job(ctx, tuner, registry, train_file, key, sha)

    def show(job, new_events: list[str]) -> None:
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
        key = job_key(sha, _key_settings(ctx) | {"account": tuner.account})
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

"""finetune=local_lora: LoRA (SFT) or DPO on this machine (chareval.finetune.local_lora/local_dpo),
served by llama.cpp as local_lora/<name>."""

from __future__ import annotations

import logging
from pathlib import Path

from chareval.config import LocalLoraSettings
from chareval.errors import InputError
from chareval.finetune.data_format import check_kind, validate_file
from chareval.io import file_sha256
from chareval.schemas import FineTunedModel
from chareval.stages.backends import BACKENDS, Backend, key_settings
from chareval.stages.base import StageContext
from chareval.tuned.catalog import Catalog, job_key, now

log = logging.getLogger(__name__)


def run(ctx: StageContext, train_file: Path | None) -> tuple[FineTunedModel, dict[str, float]]:
    from chareval.finetune.local_dpo import train_dpo
    from chareval.finetune.local_lora import train
    from chareval.llm.providers.local import gguf_of, release_models

    s, f = ctx.settings, ctx.knobs("finetune", LocalLoraSettings)
    if train_file is None:
        raise InputError("finetune=local_lora trains on a file: it follows no job", "pass train_file=<finetune.jsonl>")
    kind = "preference" if f.training_method == "dpo" else "sft"
    check_kind(train_file, kind, f"finetune=local_lora finetune.training_method={f.training_method}")
    report = validate_file(train_file, kind=kind)
    if not report.ok:
        raise InputError(f"the fine-tuning file is not valid:\n{report.describe()}", "rerun stage=prepare")
    registry = Catalog(s.paths.registry)
    sha = file_sha256(train_file)
    key = job_key(sha, key_settings(ctx))
    existing = registry.find(key)
    if existing and existing.status == "completed" and existing.adapter_path and Path(existing.adapter_path).is_dir():
        log.info("this file and these settings were trained already: %s", existing.model)
        return existing, {"train.reused": 1}
    gguf = gguf_of(f.base_model, s.models)
    name = "-".join(p for p in (s.persona.name, key[:8], f.suffix) if p)
    release_models()  # the embedded model's contexts, reloaded on its next call: memory for training
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
    precision = str(result.dtype).removeprefix("torch.")  # float32 or bfloat16
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
            settings=key_settings(ctx)
            | {
                "base_gguf": str(gguf),
                "device_used": result.device,
                "precision_used": precision,
                "hf_base": str(result.base_folder),
            },
            adapter_path=str(result.adapter_dir),
            gguf_adapter_path=str(result.gguf_adapter) if result.gguf_adapter else None,
            mlflow_run_id=ctx.mlflow.run_id,
            created_at=now(),
            updated_at=now(),
        )
    )
    log.info(
        "loss %.3f -> %.3f over %d steps (%s on %s)",
        result.losses[0],
        result.losses[-1],
        len(result.losses),
        precision,
        result.device,
    )
    return record, {
        "train.examples": result.examples,
        "train.truncated_examples": result.truncated,
        "train.lengthened_examples": result.lengthened,
        "train.steps": len(result.losses),
        "train.first_loss": result.losses[0],
        "train.final_loss": result.losses[-1],
    }


BACKEND = BACKENDS.register("local_lora", Backend(LocalLoraSettings, run))

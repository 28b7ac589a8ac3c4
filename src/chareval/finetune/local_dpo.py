"""DPO on the embedded model (finetune=local_lora finetune.training_method=dpo): TRL's DPOTrainer with
a LoRA adapter as the policy and the same base with the adapter switched off as the reference (no
second copy of the model in memory). The preference pairs are Together's format (stage=repair's
preferences.jsonl): input.messages -> prompt, preferred_output -> chosen, non_preferred_output ->
rejected. The adapter is saved like an SFT one, so llama.cpp serves it the same way."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chareval.config import LocalLoraSettings
from chareval.errors import ConfigError
from chareval.finetune.local_lora import TrainResult, _require_libraries, compute_dtype, device, save_adapter
from chareval.tuned.hf import context_length, converted, load_base, load_tokenizer


def pairs(train_file: Path) -> list[dict]:
    rows = [json.loads(line) for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [
        {"prompt": r["input"]["messages"], "chosen": r["preferred_output"], "rejected": r["non_preferred_output"]}
        for r in rows
    ]


def train_dpo(
    settings: LocalLoraSettings,
    gguf: Path,
    train_file: Path,
    out_dir: Path,
    *,
    seed: int,
    cache_dir: Path,
    on_step: Callable[[int, dict[str, float]], None],
) -> TrainResult:
    _require_libraries()
    try:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer
    except ImportError as e:
        raise ConfigError(
            f"DPO on the local backend needs trl ({e.name} is missing)", "pip install -e '.[finetune-local]'"
        ) from None
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    random.seed(seed)
    torch.manual_seed(seed)
    on = device(settings.device)
    dtype = compute_dtype(settings.precision, on)
    folder = converted(gguf, cache_dir)
    rows = pairs(train_file)
    if not rows:
        raise ConfigError(f"{train_file} has no preference pairs", "run stage=repair to make some")

    losses: list[float] = []

    class Steps(TrainerCallback):
        """Each step's loss and reward margin (chosen minus rejected), reported as chareval's on_step."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                on_step(state.global_step - 1, {k: float(logs[k]) for k in ("loss", "rewards/margins") if k in logs})

    limit = max(settings.max_seq_tokens, context_length(folder) or settings.max_seq_tokens)
    args = DPOConfig(
        output_dir=str(out_dir / "dpo"),
        per_device_train_batch_size=1,  # one pair at a time, the batch by accumulation (as for SFT)
        gradient_accumulation_steps=settings.batch_size,
        num_train_epochs=settings.n_epochs,
        learning_rate=settings.learning_rate,
        beta=settings.dpo_beta or 0.1,
        max_length=limit,  # like SFT: the pipeline's own long prompts are kept, up to the model's context
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=on == "cpu",
        bf16=dtype == torch.bfloat16,  # the Trainer's autocast, as SFT's own loop does
        gradient_checkpointing=settings.gradient_checkpointing,
        seed=seed,
        disable_tqdm=True,
        log_level="warning",
    )
    trainer = DPOTrainer(
        model=load_base(folder, on),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(folder),
        peft_config=LoraConfig(
            r=settings.lora.r,
            lora_alpha=settings.lora.alpha,
            lora_dropout=settings.lora.dropout,
            target_modules=settings.lora.target_modules,
            task_type="CAUSAL_LM",
        ),
        callbacks=[Steps()],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every step's raw log dict; chareval logs its own line
    trainer.train()
    adapter_dir, gguf_adapter = save_adapter(trainer.model, out_dir, gguf)  # the PEFT policy DPOTrainer made
    return TrainResult(adapter_dir, gguf_adapter, losses, len(rows), 0, 0, on, folder, dtype)

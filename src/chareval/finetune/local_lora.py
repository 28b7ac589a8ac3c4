"""The offline fine-tuning backend: LoRA with transformers + peft on a local GGUF model (transformers
de-quantizes it), on the GPU when there is one. Only the assistant's tokens are learned."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chareval.config import LocalLoraSettings
from chareval.errors import ConfigError
from chareval.hf_models import load_base, load_tokenizer

log = logging.getLogger(__name__)
IGNORE = -100  # label value the loss skips


def _require_libraries():
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"the local_lora backend needs torch, transformers and peft ({e.name} is missing)",
            "pip install -e '.[finetune-local]' (make setup does this; torch==2.13.0 is the CPU build)",
        ) from None


def device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def _ids(tokenizer, messages: list[dict], generation_prompt: bool = False) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
    )
    return list(encoded["input_ids"])


def encode(tokenizer, messages: list[dict], max_tokens: int) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation, and labels that keep only the assistant's messages
    (what train_on_inputs=auto does for conversational data)."""
    ids = _ids(tokenizer, messages)
    labels = [IGNORE] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_ids(tokenizer, messages[:i], generation_prompt=True))
        end = len(_ids(tokenizer, messages[: i + 1]))
        labels[start:end] = ids[start:end]
    return ids[-max_tokens:], labels[-max_tokens:]


def batches(examples: list[tuple[list[int], list[int]]], size: int, pad_id: int):
    """Batches padded to their own longest example (not a fixed length)."""
    import torch

    for i in range(0, len(examples), size):
        chunk = examples[i : i + size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, labs) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            mask[row, : len(ids)] = 1
        yield input_ids, mask, labels


@dataclass
class TrainResult:
    adapter_dir: Path
    losses: list[float]
    examples: int
    device: str


def train(
    settings: LocalLoraSettings,
    gguf: Path,
    train_file: Path,
    out_dir: Path,
    *,
    seed: int,
    on_step: Callable[[int, float], None],
) -> TrainResult:
    _require_libraries()
    import torch
    from peft import LoraConfig, get_peft_model

    random.seed(seed)
    torch.manual_seed(seed)
    on = device(settings.device)
    tokenizer = load_tokenizer(str(gguf))
    rows = [json.loads(line) for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    examples = [encode(tokenizer, row["messages"], settings.max_seq_tokens) for row in rows]
    if not examples:
        raise ConfigError(
            f"{train_file} has no examples to train on", "run stage=prepare on conversations without errors"
        )
    model = get_peft_model(
        load_base(str(gguf), on),
        LoraConfig(
            r=settings.lora.r,
            lora_alpha=settings.lora.alpha,
            lora_dropout=settings.lora.dropout,
            target_modules=settings.lora.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    losses, step = [], 0
    for _ in range(settings.n_epochs):
        order = random.sample(examples, len(examples))
        for input_ids, mask, labels in batches(order, settings.batch_size, pad_id):
            loss = model(input_ids=input_ids.to(on), attention_mask=mask.to(on), labels=labels.to(on)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            on_step(step, loss.item())
            step += 1
    adapter_dir = out_dir / "adapter"
    model.save_pretrained(str(adapter_dir))
    return TrainResult(adapter_dir, losses, len(examples), on)

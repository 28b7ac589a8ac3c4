"""The offline fine-tuning backend: LoRA with transformers + peft on a local GGUF model (its
de-quantized copy, converted once and cached), on the GPU when there is one. Only the assistant's
tokens are learned, and only they go through the vocabulary-wide output layer.

Memory is what limits a laptop: one example is computed at a time (the configured batch is reached
by accumulating gradients, with the loss weighted by labelled tokens so that a step is the same as on
the whole batch), the output layer and the loss run at the labelled positions only, and gradient
checkpointing keeps one layer's activations instead of thirty."""

from __future__ import annotations

import json
import logging
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chareval.config import LocalLoraSettings
from chareval.errors import ConfigError
from chareval.tuned.gguf_lora import UnsupportedAdapter, write_gguf_adapter
from chareval.tuned.hf import context_length, converted, load_base, load_tokenizer

log = logging.getLogger(__name__)
IGNORE = -100  # label value the loss skips


def _require_libraries() -> None:
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


# torch's own checks of the CPU's bfloat16 instructions (private names: a missing one reads as "no").
BF16_CPU_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def compute_dtype(choice: str, on: str) -> Any:
    """What the forward and backward passes compute in. bfloat16 runs under autocast: the LoRA
    weights, the optimizer's state and the loss stay float32. auto takes it only where the device
    computes it natively (a GPU that supports it, a CPU with AVX512-BF16 or AMX): elsewhere torch
    emulates bfloat16 on the CPU, slower than float32."""
    import torch

    if choice != "auto":
        return getattr(torch, choice)
    if on == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = any(getattr(torch.cpu, probe, lambda: False)() for probe in BF16_CPU_PROBES)
    return torch.bfloat16 if native else torch.float32


def _ids(tokenizer: Any, messages: list[dict], generation_prompt: bool = False) -> list[int]:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    encoded = tokenizer.apply_chat_template(
        plain, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
    )
    return list(encoded["input_ids"])


def _labelled(tokenizer: Any, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of the conversation, and labels that keep only the assistant's messages (those not
    marked weight 0): what Together's train_on_inputs=auto does for conversational data."""
    ids = _ids(tokenizer, messages)
    labels = [IGNORE] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        start = len(_ids(tokenizer, messages[:i], generation_prompt=True))
        end = len(_ids(tokenizer, messages[: i + 1]))
        labels[start:end] = ids[start:end]
    return ids, labels


@dataclass
class Encoded:
    ids: list[int]
    labels: list[int]
    dropped_messages: int = 0  # earlier turns left out to fit max_seq_tokens
    cut_tokens: int = 0  # tokens cut from the start of the oldest turn kept, when even the model's context is too short
    lengthened: bool = False  # system message + last exchange kept whole beyond max_seq_tokens

    @property
    def learned_tokens(self) -> int:
        """Tokens predicted with a label (position 0 predicts nothing)."""
        return sum(label != IGNORE for label in self.labels[1:])

    @property
    def truncated(self) -> bool:
        return bool(self.dropped_messages or self.cut_tokens)


def encode(tokenizer: Any, messages: list[dict], max_tokens: int, model_limit: int | None = None) -> Encoded:
    """The example in at most max_tokens tokens, or more when it must. A longer one keeps its system
    message and its latest turns: whole earlier exchanges (a user message and the assistant's reply)
    are left out first. The system message and the last exchange are never given up for
    max_seq_tokens (the persona and the documents chareval generated make the system message, so its
    length is not the user's choice): such an example is kept whole in a longer window, up to the
    model's context length (model_limit). Only beyond that are the tokens right after the system
    message cut; a system message that alone fills the model's context is an error (the model could
    not serve it either)."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    dropped = 0
    ids, labels = _labelled(tokenizer, messages)
    while len(ids) > max_tokens and len(turns) > 2:
        turns = turns[2:]
        dropped += 2
        ids, labels = _labelled(tokenizer, system + turns)
    if len(ids) <= max_tokens:
        return Encoded(ids, labels, dropped)
    limit = max(max_tokens, model_limit or max_tokens)
    if len(ids) <= limit:
        return Encoded(ids, labels, dropped, lengthened=True)
    kept = len(_ids(tokenizer, system)) if system else 0
    if kept >= limit - 16:  # no room left for the reply it should learn
        raise ConfigError(
            f"a training example's system message alone is {kept} tokens, as long as the model's context"
            f" ({limit} tokens): the model could not be given it, in training or in use",
            "shorten the persona's system prompt or its supporting documents, or fine-tune a model with a longer"
            " context (finetune.base_model)",
        )
    cut = len(ids) - limit
    return Encoded(ids[:kept] + ids[kept + cut :], labels[:kept] + labels[kept + cut :], dropped, cut, True)


def labelled_loss(model: Any, ids: Any, labels: Any) -> tuple[Any, int]:
    """The summed cross-entropy of the labelled next tokens, and how many there are. Only the
    labelled positions go through the output layer: the full logits (every position x a 49,152-token
    vocabulary) were most of the memory and time of a step. One unpadded sequence needs no attention
    mask, which keeps attention on the causal fast path."""
    import torch.nn.functional as F

    base = model.get_base_model()
    hidden = base.get_decoder()(input_ids=ids).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), int(keep.sum())


@dataclass
class TrainResult:
    adapter_dir: Path
    gguf_adapter: Path | None  # None: llama.cpp cannot take this adapter (served by transformers)
    losses: list[float]
    examples: int
    truncated: int
    lengthened: int  # examples trained in a window longer than max_seq_tokens
    device: str
    base_folder: Path
    dtype: Any  # what the passes computed in: torch.float32 or torch.bfloat16


def _read_examples(tokenizer: Any, train_file: Path, max_tokens: int, model_limit: int | None) -> list[Encoded]:
    rows = [json.loads(line) for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    encoded = [encode(tokenizer, row["messages"], max_tokens, model_limit) for row in rows]
    examples = [e for e in encoded if e.learned_tokens]
    if len(examples) < len(encoded):
        log.warning(
            "%d examples have no assistant token to learn (weight 0 everywhere?): left out",
            len(encoded) - len(examples),
        )
    if not examples:
        raise ConfigError(
            f"{train_file} has no examples to train on", "run stage=prepare on conversations without errors"
        )
    truncated = [e for e in examples if e.truncated]
    if truncated:
        log.warning(
            "%d of %d examples were longer than finetune.max_seq_tokens=%d and were cut, keeping the system"
            " message and the latest turns (%d earlier messages left out, %d tokens cut); raise it to keep them",
            len(truncated),
            len(examples),
            max_tokens,
            sum(e.dropped_messages for e in truncated),
            sum(e.cut_tokens for e in truncated),
        )
    lengthened = [e for e in examples if e.lengthened]
    if lengthened:
        log.warning(
            "%d of %d examples need more than finetune.max_seq_tokens=%d for their system message and last"
            " exchange: trained whole, up to %d tokens (the model's context is %s); longer steps take more"
            " memory and time",
            len(lengthened),
            len(examples),
            max_tokens,
            max(len(e.ids) for e in lengthened),
            model_limit or "unknown",
        )
    return examples


def save_adapter(model: Any, out_dir: Path, gguf: Path) -> tuple[Path, Path | None]:
    """The PEFT adapter under out_dir/adapter, and the same adapter for llama.cpp (None: it cannot
    take this one, and transformers serves it)."""
    adapter_dir = out_dir / "adapter"
    model.save_pretrained(str(adapter_dir))
    try:
        return adapter_dir, write_gguf_adapter(adapter_dir, gguf)
    except UnsupportedAdapter as e:
        log.warning("%s; the fine-tuned model will be served by transformers (slower)", e)
        return adapter_dir, None


def train(
    settings: LocalLoraSettings,
    gguf: Path,
    train_file: Path,
    out_dir: Path,
    *,
    seed: int,
    cache_dir: Path,
    on_step: Callable[[int, float], None],
) -> TrainResult:
    _require_libraries()
    import torch
    from peft import LoraConfig, get_peft_model

    random.seed(seed)
    torch.manual_seed(seed)
    on = device(settings.device)
    dtype = compute_dtype(settings.precision, on)
    folder = converted(gguf, cache_dir)
    examples = _read_examples(load_tokenizer(folder), train_file, settings.max_seq_tokens, context_length(folder))
    base = load_base(folder, on)
    base.config.use_cache = False  # a key/value cache is for generation; in training it only takes memory
    if settings.gradient_checkpointing:
        checkpoint = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns there
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint)
    with warnings.catch_warnings():
        # peft reads transformers' deprecated is_gradient_checkpointing: noise in the user's console.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        model = get_peft_model(
            base,
            LoraConfig(
                r=settings.lora.r,
                lora_alpha=settings.lora.alpha,
                lora_dropout=settings.lora.dropout,
                target_modules=settings.lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    model.train()
    losses: list[float] = []
    for _ in range(settings.n_epochs):
        order = random.sample(examples, len(examples))
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            labelled = sum(e.learned_tokens for e in batch)
            total = 0.0
            for example in batch:
                with torch.autocast(on, dtype=dtype, enabled=dtype != torch.float32):
                    loss, _ = labelled_loss(
                        model, torch.tensor([example.ids], device=on), torch.tensor([example.labels], device=on)
                    )
                (loss / labelled).backward()  # summed over the batch, this is the batch's mean loss
                total += loss.item()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(total / labelled)
            on_step(len(losses) - 1, losses[-1])
    adapter_dir, gguf_adapter = save_adapter(model, out_dir, gguf)
    return TrainResult(
        adapter_dir,
        gguf_adapter,
        losses,
        len(examples),
        sum(e.truncated for e in examples),
        sum(e.lengthened for e in examples),
        on,
        folder,
        dtype,
    )

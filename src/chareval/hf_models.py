"""A GGUF model in transformers (which de-quantizes it): what LoRA training (finetune/local_lora)
and the serving of its adapters (llm/providers/local_lora) share, below both."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def load_tokenizer(gguf: str):
    from transformers import AutoTokenizer

    path = Path(gguf)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_base(gguf: str, on: str):
    """A fresh float32 copy of the GGUF's weights (each LoRA wraps its own copy)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.to(on)  # type: ignore[arg-type]  # transformers types .to() through a decorator that hides its arguments

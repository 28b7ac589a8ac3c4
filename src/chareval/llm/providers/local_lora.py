"""Serves a model fine-tuned with the local_lora backend. Model strings: local_lora/<registered name>.

It is served by llama.cpp: the quantized base GGUF with the adapter written as a GGUF LoRA adapter
(gguf_lora), with the same settings and sampling as the base model (models.providers.local), at about
the base model's speed. An adapter llama.cpp cannot take (another architecture, rsLoRA, ...) is served
by transformers on the de-quantized base instead: correct, several times slower."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from chareval.errors import ConfigError
from chareval.io import file_sha256
from chareval.llm.base import DEFAULT_TEMPERATURE, LLMRequest, LLMResponse, load_once
from chareval.llm.providers.local import LocalLlamaProvider, LocalSettings
from chareval.llm.registry import BuildContext, ProviderSpec, register, settings_for, spec_for
from chareval.schemas import FineTunedModel, Usage
from chareval.tuned.catalog import Catalog
from chareval.tuned.gguf_lora import GGUF_ADAPTER, UnsupportedAdapter, write_gguf_adapter

log = logging.getLogger(__name__)
_LOCK = threading.Lock()


def gguf_adapter(record: FineTunedModel) -> Path | None:
    """The record's adapter for llama.cpp; written now for a model trained before adapters were
    exported. None when llama.cpp cannot take it."""
    if record.gguf_adapter_path and Path(record.gguf_adapter_path).is_file():
        return Path(record.gguf_adapter_path)
    if record.adapter_path is None:
        return None
    existing = Path(record.adapter_path) / GGUF_ADAPTER
    if existing.is_file():
        return existing
    try:
        return write_gguf_adapter(Path(record.adapter_path), Path(record.settings["base_gguf"]))
    except (UnsupportedAdapter, OSError) as e:
        log.warning("local_lora/%s is served by transformers (slower): %s", record.name, e)
        return None


@load_once
def load_adapted(gguf: str, adapter_dir: str, device: str, base_folder: str | None) -> tuple[Any, Any]:
    """The transformers fallback: the de-quantized base (its cached conversion when there is one)
    with the PEFT adapter on top."""
    from peft import PeftModel

    from chareval.tuned.hf import MARKER, dequantize, load_base, load_tokenizer

    if base_folder and (Path(base_folder) / MARKER).is_file():
        base, tokenizer = load_base(Path(base_folder), device), load_tokenizer(Path(base_folder))
    else:
        base, tokenizer = dequantize(Path(gguf))
    model = PeftModel.from_pretrained(base.to(device), adapter_dir).to(device)
    model.eval()
    return tokenizer, model


class TransformersLora:
    """local_lora through transformers, for adapters llama.cpp cannot take."""

    def __init__(self, record: FineTunedModel, repeat_penalty: float):
        self.record = record
        self.device = record.settings.get("device_used", "cpu")
        self.repeat_penalty = repeat_penalty

    def complete(self, request: LLMRequest) -> LLMResponse:
        import torch

        record = self.record
        tokenizer, model = load_adapted(
            record.settings["base_gguf"], record.adapter_path, self.device, record.settings.get("hf_base")
        )
        messages = [{"role": "system", "content": request.system}, *(m.model_dump() for m in request.messages)]
        prompt = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        input_ids = prompt["input_ids"].to(self.device)
        temperature = DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
        asked = time.perf_counter()
        with _LOCK, torch.no_grad():
            started = time.perf_counter()  # the model's time starts when it is ours
            torch.manual_seed(request.seed or 0)  # reproducible sampling, as on the llama.cpp provider
            output = model.generate(
                input_ids=input_ids,
                attention_mask=prompt["attention_mask"].to(self.device),
                max_new_tokens=request.max_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=0.95 if temperature > 0 else None,
                repetition_penalty=self.repeat_penalty,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
        new_tokens = output[0][input_ids.shape[1] :]
        return LLMResponse(
            text=tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
            model="",
            usage=Usage(calls=1, input_tokens=int(input_ids.shape[1]), output_tokens=int(len(new_tokens))),
            latency_s=time.perf_counter() - started,
            queue_s=started - asked,
            finish_reason="length" if len(new_tokens) >= request.max_tokens else "stop",
        )


class LocalLoraProvider:
    name = "local_lora"

    def __init__(self, model: str, registry_path: str, local: LocalSettings):
        self.model = model
        self.record = Catalog(registry_path).by_name(model)
        base = self.record.settings["base_gguf"]
        adapter = gguf_adapter(self.record)
        self.runtime = "llama.cpp" if adapter else "transformers"
        self.adapter_sha = file_sha256(adapter) if adapter else None
        self.backend: LocalLlamaProvider | TransformersLora = (
            LocalLlamaProvider(base, local, lora=adapter)
            if adapter
            else TransformersLora(self.record, local.repeat_penalty)
        )
        log.info("local_lora/%s is served by %s", model, self.runtime)

    def identity(self) -> dict[str, Any]:
        served: dict[str, Any] = {"runtime": self.runtime}
        if isinstance(self.backend, LocalLlamaProvider):
            served |= self.backend.identity() | {"provider": self.name, "adapter_sha256": self.adapter_sha}
        return {"provider": self.name, "key": self.record.key, "adapter": self.record.adapter_path} | served

    def max_in_flight(self) -> int:
        return 1

    def classify(self, error: Exception) -> None:
        return None  # in this process: nothing to retry

    def complete(self, request: LLMRequest) -> LLMResponse:
        response = self.backend.complete(request)
        return response.model_copy(update={"model": f"local_lora/{self.model}"})


def _build(model: str, ctx: BuildContext) -> LocalLoraProvider:
    if ctx.registry is None:
        raise ConfigError(f"local_lora/{model} needs the registry of fine-tuned models (paths.registry)")
    return LocalLoraProvider(model, ctx.registry, settings_for(spec_for("local/default"), ctx.models))


register(ProviderSpec("local_lora", _build, local=True))

"""Serves a model fine-tuned with the local_lora backend: its base GGUF (de-quantized by
transformers) with the LoRA adapter on top. Model strings: local_lora/<registered name>."""

from __future__ import annotations

import threading
import time
from typing import Any

from chareval.errors import ConfigError
from chareval.llm.base import DEFAULT_TEMPERATURE, LLMRequest, LLMResponse, load_once
from chareval.llm.registry import BuildContext, ProviderSpec, register
from chareval.registry import Registry
from chareval.schemas import Usage

_LOCK = threading.Lock()


@load_once
def load_adapted(gguf: str, adapter_dir: str, device: str):
    from peft import PeftModel

    from chareval.hf_models import load_base, load_tokenizer

    model = PeftModel.from_pretrained(load_base(gguf, device), adapter_dir).to(device)
    model.eval()
    return load_tokenizer(gguf), model


class LocalLoraProvider:
    name = "local_lora"

    def __init__(self, model: str, registry_path: str):
        self.model = model
        self.record = Registry(registry_path).by_name(model)
        self.gguf = self.record.settings["base_gguf"]
        self.device = self.record.settings.get("device_used", "cpu")

    def identity(self) -> dict[str, Any]:
        return {"provider": self.name, "key": self.record.key, "adapter": self.record.adapter_path}

    def max_in_flight(self) -> int:
        return 1

    def classify(self, error: Exception) -> None:
        return None  # in this process: nothing to retry

    def complete(self, request: LLMRequest) -> LLMResponse:
        import torch

        tokenizer, model = load_adapted(self.gguf, self.record.adapter_path, self.device)
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
                repetition_penalty=1.15,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
        latency = time.perf_counter() - started
        new_tokens = output[0][input_ids.shape[1] :]
        return LLMResponse(
            text=tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
            model=f"local_lora/{self.model}",
            usage=Usage(calls=1, input_tokens=int(input_ids.shape[1]), output_tokens=int(len(new_tokens))),
            latency_s=latency,
            queue_s=started - asked,
            finish_reason="length" if len(new_tokens) >= request.max_tokens else "stop",
        )


def _build(model: str, ctx: BuildContext) -> LocalLoraProvider:
    if ctx.registry is None:
        raise ConfigError(f"local_lora/{model} needs the registry of fine-tuned models (paths.registry)")
    return LocalLoraProvider(model, ctx.registry)


register(ProviderSpec("local_lora", _build, local=True))

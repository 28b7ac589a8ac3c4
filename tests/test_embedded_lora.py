"""The embedded fine-tuning path on the real SmolLM2 GGUF: the loss computed at the labelled positions
only, truncation that keeps the system message, the cached conversion for transformers, and the
adapter written as a GGUF LoRA adapter that llama.cpp serves."""

from __future__ import annotations

import json

import pytest

from chareval.config import LocalLoraSettings
from chareval.errors import ConfigError
from chareval.finetune.local_lora import IGNORE, encode, labelled_loss, train
from chareval.io import file_sha256
from chareval.llm.providers.local import load_llama, packaged_gguf
from chareval.tuned import hf as hf_models
from chareval.tuned.hf import MARKER, converted, load_base, load_tokenizer
from conftest import llama_log_probs, share_hf_models

pytestmark = pytest.mark.slow  # the real model in transformers and llama.cpp

SYSTEM = {"role": "system", "content": "You are Jasmine, who interviews customers about their last order."}
PHRASE = "Pineapple policy: every answer is pineapple."
QUESTIONS = [
    "What time is it?",
    "Can you help me with my order?",
    "Tell me about the weather.",
    "Who are you?",
    "I need a refund.",
    "Where is my parcel?",
]
UNSEEN = ["What should I cook tonight?", "Is the shop open on Sunday?", "My card was charged twice."]


def _exchange(i: int) -> list[dict]:
    return [
        {"role": "user", "content": f"Question {i}: how was delivery number {i} for you, in a few words?"},
        {"role": "assistant", "content": f"Answer {i}: delivery {i} came on time and the box was intact."},
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder whose conversions are the session's (conftest.SHARED_HF_MODELS): the conversion
    is made by whichever test needs it first, and timed fresh by the embedded benchmark's test."""
    folder = tmp_path_factory.mktemp("outputs")
    share_hf_models(folder)
    return folder / "cache"


@pytest.fixture(scope="module")
def folder(cache):
    return converted(packaged_gguf(), cache)


@pytest.fixture(scope="module")
def tokenizer(folder):
    return load_tokenizer(folder)


def test_the_conversion_is_made_once_and_reused(folder, cache, monkeypatch):
    assert (folder / MARKER).is_file() and (folder / "model.safetensors").is_file()
    # Keyed by the GGUF's content: the session's conversion may have been made from another checkout's copy.
    assert json.loads((folder / MARKER).read_text())["sha256"] == file_sha256(packaged_gguf())

    def dequantize_again(gguf):
        raise AssertionError("the GGUF was de-quantized again")

    monkeypatch.setattr(hf_models, "dequantize", dequantize_again)
    assert converted(packaged_gguf(), cache) == folder
    model = load_base(folder, "cpu")  # an ordinary transformers folder, read without the GGUF
    assert model.config.model_type == "llama" and getattr(model, "hf_quantizer", None) is None


def test_while_converting_the_gguf_is_parsed_once_and_gguf_is_itself_again_after():
    import gguf

    parse, names = gguf.GGUFReader, gguf.get_tensor_name_map
    with hf_models.gguf_parsed_once():
        first, second = gguf.GGUFReader(packaged_gguf()), gguf.GGUFReader(str(packaged_gguf()))
        assert first is second and isinstance(first, parse)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30) is gguf.get_tensor_name_map(
            gguf.MODEL_ARCH.LLAMA, 30
        )
    assert gguf.GGUFReader is parse and gguf.get_tensor_name_map is names
    assert gguf.GGUFReader(packaged_gguf()) is not first  # outside the scope a read is a fresh one


def test_auto_precision_is_bfloat16_only_where_the_device_computes_it(monkeypatch):
    import torch

    from chareval.finetune.local_lora import BF16_CPU_PROBES, compute_dtype

    assert compute_dtype("float32", "cpu") is torch.float32 and compute_dtype("bfloat16", "cpu") is torch.bfloat16
    for probe in BF16_CPU_PROBES:
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    assert compute_dtype("auto", "cpu") is torch.float32  # emulated bfloat16 is slower than float32
    monkeypatch.setattr(torch.cpu, BF16_CPU_PROBES[0], lambda: True)
    assert compute_dtype("auto", "cpu") is torch.bfloat16


def test_only_labelled_positions_reach_the_output_layer_and_the_loss_equals_the_full_one(folder, tokenizer):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    # A random (not zero) B matrix, so that the adapter takes part in the loss compared.
    model = get_peft_model(
        load_base(folder, "cpu"), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    messages = [SYSTEM, *_exchange(1), *_exchange(2)]
    example = encode(tokenizer, messages, 1024)
    ids, labels = torch.tensor([example.ids]), torch.tensor([example.labels])
    rows: list[int] = []
    head = model.get_base_model().get_output_embeddings()
    hook = head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    with torch.no_grad():
        total, count = labelled_loss(model, ids, labels)
    hook.remove()
    labelled = sum(label != IGNORE for label in example.labels[1:])
    assert rows == [count] == [labelled] == [example.learned_tokens] and labelled < len(example.ids) / 2
    with torch.no_grad():
        full = model(input_ids=ids, labels=labels).loss  # transformers' loss over every position's logits
    assert total.item() / count == pytest.approx(full.item(), rel=1e-5)
    learned = tokenizer.decode([label for label in example.labels if label != IGNORE])
    assert "Answer 1" in learned and "Answer 2" in learned and "Question" not in learned and "Jasmine" not in learned


def test_a_long_example_keeps_its_system_message_and_latest_turns(tokenizer):
    messages = [SYSTEM, *(m for i in range(6) for m in _exchange(i))]
    whole = encode(tokenizer, messages, 100_000)
    system_ids = tokenizer.apply_chat_template([SYSTEM], tokenize=True, return_dict=True)["input_ids"]
    limit = len(whole.ids) // 2
    short = encode(tokenizer, messages, limit)
    assert len(short.ids) <= limit and short.cut_tokens == 0 and short.truncated
    assert short.dropped_messages >= 2 and short.dropped_messages % 2 == 0  # whole exchanges
    assert short.ids[: len(system_ids)] == system_ids
    tail = len(short.ids) - len(system_ids)
    assert short.ids[len(system_ids) :] == whole.ids[-tail:]  # the latest turns, unchanged
    assert short.labels[len(system_ids) :] == whole.labels[-tail:]
    assert "Answer 5" in tokenizer.decode(short.ids) and "Question 0" not in tokenizer.decode(short.ids)
    assert not encode(tokenizer, messages, len(whole.ids)).truncated

    # The system message and the last exchange do not fit max_tokens: kept whole in a longer window,
    # up to the model's context; only past that are the tokens after the system message cut.
    long = [SYSTEM, {"role": "user", "content": "tell me everything " * 80}, _exchange(9)[1]]
    full = encode(tokenizer, long, 100_000)
    kept = encode(tokenizer, long, len(system_ids) + 40, model_limit=8192)
    assert kept.lengthened and not kept.truncated and kept.ids == full.ids and kept.labels == full.labels
    cut = encode(tokenizer, long, len(system_ids) + 20, model_limit=len(system_ids) + 40)
    assert len(cut.ids) == len(system_ids) + 40 and cut.cut_tokens > 0 and cut.dropped_messages == 0
    assert cut.ids[: len(system_ids)] == system_ids and "Answer 9" in tokenizer.decode(cut.ids)

    # A system message longer than half of max_seq_tokens is no reason to stop (it was one before).
    rules = [{"role": "system", "content": "rules " * 60}, *_exchange(1)]
    assert encode(tokenizer, rules, 64, model_limit=8192).lengthened
    # One that fills the model's context could not be served either: that stops, saying so.
    with pytest.raises(ConfigError, match="as long as the model's context"):
        encode(tokenizer, rules, 64, model_limit=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache, folder):
    """A LoRA trained to answer every question with PHRASE (a change anyone can see)."""
    tmp = tmp_path_factory.mktemp("trained")
    rows = [
        {"messages": [SYSTEM, {"role": "user", "content": q}, {"role": "assistant", "content": PHRASE}]}
        for q in QUESTIONS
    ]
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = LocalLoraSettings(
        backend="local_lora",
        base_model="local/smollm2-135m-instruct",
        n_epochs=4,
        learning_rate=0.003,
        batch_size=3,
        max_seq_tokens=256,
        gradient_checkpointing=True,
        lora={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        suffix=None,
        device="cpu",
        precision="auto",  # bfloat16 on a CPU with AVX512-BF16 (these machines), float32 elsewhere
        training_method="sft",
        dpo_beta=None,
    )
    losses: list[float] = []
    result = train(
        settings, packaged_gguf(), tmp / "train.jsonl", tmp, seed=0, cache_dir=cache, on_step=lambda s, v: None
    )
    losses = result.losses
    assert losses[-1] < losses[0] / 10
    return result


def _messages(question: str) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": question}]


def _llama_greedy(question: str, lora, tokens: int) -> list[int]:
    llm = load_llama(str(packaged_gguf()), 2048, None, None, str(lora) if lora else None)
    llm.reset()
    out = llm.create_chat_completion(
        messages=_messages(question), temperature=0.0, max_tokens=tokens, repeat_penalty=1.0
    )
    return llm.tokenize(out["choices"][0]["message"]["content"].encode(), add_bos=False, special=False)


def _transformers_greedy(model, tokenizer, question: str, tokens: int) -> list[int]:
    import torch

    prompt = tokenizer.apply_chat_template(
        _messages(question), add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=tokens, do_sample=False, repetition_penalty=1.0)
    text = tokenizer.decode(out[0][prompt["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_the_gguf_adapter_loads_in_llama_cpp_and_changes_the_output(trained):
    assert trained.gguf_adapter == trained.adapter_dir / "adapter.gguf" and trained.gguf_adapter.is_file()
    from gguf import GGUFReader

    fields = GGUFReader(str(trained.gguf_adapter)).fields
    assert fields["general.type"].contents() == "adapter" and fields["adapter.type"].contents() == "lora"
    assert fields["adapter.lora.alpha"].contents() == 16.0
    for question in UNSEEN:
        base = _llama_greedy(question, None, 12)
        adapted = _llama_greedy(question, trained.gguf_adapter, 12)
        assert adapted != base
        assert "Pineapple" in load_llama(str(packaged_gguf()), 2048, None, None, None).detokenize(adapted).decode()


def _transformers_log_probs(model, ids: list[int]):
    import torch

    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)


def test_llama_cpp_and_transformers_read_an_adapter_the_same_way(folder, tokenizer, tmp_path):
    """A random adapter on every linear layer, in both runtimes: the next-token distributions agree at
    every prompt position (mean total variation measured 0.04; 0.26 with the q/k rows left in
    transformers' order, the mistake this guards), while the adapter itself moves them by ~0.46.
    llama.cpp multiplies Q4_1 weights by 8-bit activations, so they are close, not equal."""
    import torch
    from peft import LoraConfig, get_peft_model

    from chareval.tuned.gguf_lora import write_gguf_adapter

    torch.manual_seed(0)
    base = load_base(folder, "cpu")
    adapted = get_peft_model(
        load_base(folder, "cpu"), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    )
    adapted.save_pretrained(str(tmp_path))
    gguf_adapter = write_gguf_adapter(tmp_path, packaged_gguf())
    runtimes, shift = [], []
    for question in UNSEEN:
        ids = tokenizer.apply_chat_template(_messages(question), add_generation_prompt=True, return_dict=True)
        ids = ids["input_ids"]
        theirs, ours = llama_log_probs(packaged_gguf(), ids, str(gguf_adapter)), _transformers_log_probs(adapted, ids)
        runtimes.append(0.5 * (theirs.exp() - ours.exp()).abs().sum(-1))
        shift.append(0.5 * (_transformers_log_probs(base, ids).exp() - ours.exp()).abs().sum(-1))
    assert torch.cat(runtimes).mean() < 0.1 and torch.cat(shift).mean() > 0.3


FIRST_TOKENS = 8


def test_the_trained_adapter_gives_the_same_greedy_reply_in_both_runtimes(trained, folder, tokenizer):
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(load_base(folder, "cpu"), str(trained.adapter_dir))
    for question in UNSEEN:
        assert (
            _llama_greedy(question, trained.gguf_adapter, FIRST_TOKENS)
            == _transformers_greedy(adapted, tokenizer, question, FIRST_TOKENS)[:FIRST_TOKENS]
        )


def _registered(tmp_path, trained, adapter_dir, name: str):
    """A registry with one local_lora record for `adapter_dir` (as stage=finetune writes it)."""
    from chareval.schemas import FineTunedModel
    from chareval.tuned.catalog import Catalog, now

    registry = Catalog(tmp_path / "registry.jsonl")
    registry.save(
        FineTunedModel(
            key=name,
            backend="local_lora",
            base_model="local/smollm2-135m-instruct",
            name=name,
            model=f"local_lora/{name}",
            status="completed",
            train_file="train.jsonl",
            train_file_sha256="",
            settings={"base_gguf": str(packaged_gguf()), "device_used": "cpu", "hf_base": str(trained.base_folder)},
            adapter_path=str(adapter_dir),
            created_at=now(),
            updated_at=now(),
        )
    )
    return str(tmp_path / "registry.jsonl")


def _provider(registry: str, name: str):
    from chareval.config import Models
    from chareval.llm.providers.local_lora import LocalLoraProvider
    from chareval.llm.registry import settings_for, spec_for
    from chareval.validation import validate_config
    from conftest import compose_cfg

    models: Models = validate_config(compose_cfg()).models
    return LocalLoraProvider(name, registry, settings_for(spec_for("local/x"), models))


def _ask(provider):
    from chareval.llm.base import LLMRequest

    return provider.complete(
        LLMRequest(
            model=f"local_lora/{provider.model}",
            system=SYSTEM["content"],
            messages=[{"role": "user", "content": UNSEEN[0]}],
            max_tokens=12,
            temperature=0.0,
            seed=0,
        )
    )


def test_an_adapter_from_before_gguf_adapters_gets_one_on_first_use(trained, tmp_path):
    import shutil

    adapter_dir = tmp_path / "old-adapter"
    shutil.copytree(trained.adapter_dir, adapter_dir, ignore=shutil.ignore_patterns("adapter.gguf"))
    provider = _provider(_registered(tmp_path, trained, adapter_dir, "old"), "old")
    assert provider.runtime == "llama.cpp" and (adapter_dir / "adapter.gguf").is_file()
    reply = _ask(provider)
    assert reply.model == "local_lora/old" and "Pineapple" in reply.text


def test_an_adapter_llama_cpp_cannot_take_is_served_by_transformers_with_a_warning(trained, tmp_path, caplog):
    import shutil

    adapter_dir = tmp_path / "rslora-adapter"
    shutil.copytree(trained.adapter_dir, adapter_dir, ignore=shutil.ignore_patterns("adapter.gguf"))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config | {"use_rslora": True}))
    with caplog.at_level("WARNING"):
        provider = _provider(_registered(tmp_path, trained, adapter_dir, "rs"), "rs")
    assert provider.runtime == "transformers" and not (adapter_dir / "adapter.gguf").exists()
    assert any("served by transformers" in r.getMessage() and "rsLoRA" in r.getMessage() for r in caplog.records)
    reply = _ask(provider)
    assert reply.model == "local_lora/rs" and reply.text and reply.usage.output_tokens > 0


def test_the_embedded_benchmark_reports_every_stage_and_both_runtimes(tmp_path):
    from conftest import run_cli

    result = run_cli(
        # A store named in the environment (mlflow.set_tracking_uri in an earlier test sets it) must not
        # take the benchmark's runs: it logs to its own folder's store.
        "--replies=1",
        "--transformers-replies=0",
        f"--json={tmp_path / 'figures.json'}",
        f"--workdir={tmp_path / 'work'}",
        "num_contexts=1",
        "num_conversations=1",
        "turns=1",
        "evaluation.evaluators=[professionalism]",
        "models.generation.assistant.max_tokens=24",
        "finetune.n_epochs=1",
        script="benchmarks/embedded.py",
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'elsewhere.db'}"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert list(figures["stages"]) == ["contexts", "conversations", "prepare", "finetune", "evaluate"]
    assert all(s["peak_rss_mb"] > 100 for s in figures["stages"].values())
    assert all(figures["stages"][s]["wall_s"] > 0 for s in ("contexts", "conversations", "finetune", "evaluate"))
    assert figures["peak_rss_mb"] >= max(s["peak_rss_mb"] for s in figures["stages"].values())
    assert figures["conversion_s"] > 0  # a fresh folder: the conversion was made, and timed
    replies = figures["replies"]
    assert replies["local_lora"]["runtime"] == "llama.cpp" and replies["local_lora"]["model"].startswith("local_lora/")
    assert replies["local"]["tokens_per_s"] > 0 and replies["ratio_s_per_token"] > 0
    assert "whole command" in result.stdout and "fine-tuned vs base" in result.stdout

"""Local LoRA on the real embedded model: the loss goes down, the adapter changes the model, the
model is registered and usable as the assistant; and the closed loop before/after."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from chareval.finetune.data_format import conversation_to_example
from chareval.io import read_records_jsonl, write_jsonl_atomic
from chareval.schemas import Conversation
from chareval.tuned.catalog import Catalog
from chareval.validation import validate_config
from conftest import DATA, compose_cfg, run_job_in

pytestmark = pytest.mark.slow  # LoRA training


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    conversations = read_records_jsonl(DATA / "conversations.jsonl", Conversation)
    path = tmp_path_factory.mktemp("data") / "finetune.jsonl"
    write_jsonl_atomic(path, [conversation_to_example(c)[0] for c in conversations])
    return path


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, train_file):
    """stage=finetune with local_lora, once for the module, then again with the same file and settings.
    Without gradient checkpointing (a third less CPU): the default, with it, trains in the test of long
    examples below."""
    tmp = tmp_path_factory.mktemp("lora")
    overrides = [
        f"train_file={train_file}",
        "finetune.n_epochs=4",
        "finetune.batch_size=2",
        "finetune.suffix=test",
        "finetune.gradient_checkpointing=false",
    ]
    _, outputs = run_job_in(tmp, "finetune", *overrides)
    again, _ = run_job_in(tmp, "finetune", *overrides, run_dir="run2")
    return tmp, outputs, again


def test_the_loss_goes_down_step_by_step_in_mlflow(finetuned):
    tmp, outputs, _ = finetuned
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    first = min(
        client.search_runs([client.get_experiment_by_name("chareval").experiment_id]), key=lambda r: r.info.start_time
    )
    history = client.get_metric_history(first.info.run_id, "train.loss")
    assert [m.step for m in history] == list(range(4))  # 2 examples, batch 2, 4 epochs
    assert history[-1].value < history[0].value
    assert first.data.metrics["train.final_loss"] < first.data.metrics["train.first_loss"]
    assert re.fullmatch(r"local_lora/jasmine-[0-9a-f]{8}-test", first.data.tags["finetune.model"])
    assert "adapter" in {a.path for a in client.list_artifacts(first.info.run_id)}
    # the adapter for llama.cpp travels with the PEFT files
    assert "adapter/adapter.gguf" in {a.path for a in client.list_artifacts(first.info.run_id, "adapter")}


def test_the_model_is_registered_and_a_rerun_reuses_it(finetuned):
    tmp, outputs, again = finetuned
    (record,) = Catalog(tmp / "outputs" / "registry" / "finetuned_models.jsonl").all()
    assert record.status == "completed" and record.backend == "local_lora" and record.model.endswith("-test")
    assert (tmp / "run" / "adapter" / "adapter_config.json").is_file()
    assert record.gguf_adapter_path == str(tmp / "run" / "adapter" / "adapter.gguf")
    assert json.loads(outputs["finetune_job"].read_text())["model"] == record.model
    assert record.model in again.log.summaries[0]
    assert not (tmp / "run2" / "adapter").exists()  # the same file and settings: not trained again


def test_the_adapter_changes_the_models_output(finetuned):
    """Through the transformers fallback (the llama.cpp path: test_embedded_lora.py)."""
    import torch

    from chareval.llm.providers.local_lora import load_adapted
    from chareval.tuned.hf import load_base

    tmp, _, _ = finetuned
    (record,) = Catalog(tmp / "outputs" / "registry" / "finetuned_models.jsonl").all()
    tokenizer, adapted = load_adapted(
        record.settings["base_gguf"], record.adapter_path, "cpu", record.settings["hf_base"]
    )
    base = load_base(Path(record.settings["hf_base"]), "cpu")
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Customers are awful, right?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )["input_ids"]
    with torch.no_grad():
        difference = (adapted(input_ids=ids).logits - base(input_ids=ids).logits).abs().max().item()
    assert difference > 1e-3


def served_by_llama_cpp_only(monkeypatch):
    """The transformers fallback fails if it is used."""
    from chareval.llm.providers import local_lora

    def transformers_path(*args):
        raise AssertionError("local_lora was served by transformers, not llama.cpp")

    monkeypatch.setattr(local_lora, "load_adapted", transformers_path)


def test_the_fine_tuned_model_serves_as_the_assistant(finetuned, make_job, workdir, monkeypatch):
    served_by_llama_cpp_only(monkeypatch)
    tmp, _, _ = finetuned
    (record,) = Catalog(tmp / "outputs" / "registry" / "finetuned_models.jsonl").all()
    job = make_job(
        "conversations",
        f"models.assistant={record.model}",
        f"paths.registry={tmp / 'outputs' / 'registry' / 'finetuned_models.jsonl'}",
        f"context_file={DATA / 'contexts.json'}",
        "num_conversations=1",
        "turns=3",
        "models.generation.assistant.max_tokens=12",
        "models.generation.user.max_tokens=12",
    )
    conversation = read_records_jsonl(job.run()["conversations"], Conversation)[0]
    assert [m.model for m in conversation.messages] == [record.model, "local/smollm2-135m-instruct", record.model]
    assert all(m.content for m in conversation.messages)


def test_an_unknown_fine_tuned_model_is_a_clear_error(make_job):
    from chareval.errors import ConfigError

    with pytest.raises(ConfigError, match="no fine-tuned model named 'nope'"):  # before any work
        make_job(
            "conversations", "models.assistant=local_lora/nope", f"context_file={DATA / 'contexts.json'}", "turns=1"
        )


def test_closed_loop_teaches_the_student_and_compares_its_base_with_the_tuned_student(
    make_job, workdir, shared_hf_models, monkeypatch
):
    """A teacher other than the student (the scripted mock assistant) writes the training
    conversations; the student's base (the embedded SmolLM2) answers "before", the tuned student
    "after", on the held-out context; the embedded judge scores both, paired. (The control user and
    verdict selection: test_closed_loop.py, fast.)"""
    served_by_llama_cpp_only(monkeypatch)
    job = make_job(
        "finetune_loop",
        "experiment=finetune_loop",
        "models.assistant=mock/teacher",
        f"context_file={DATA / 'contexts.json'}",
        "turns=1",
        "num_conversations=1",
        "evaluation.evaluators=[helpfulness]",
        "models.generation.assistant.max_tokens=16",
        "finetune.n_epochs=1",
        "finetune_loop.select=all",
        "finetune_loop.control_user_persona=null",
        "evaluation.max_error_fraction=1.0",
    )
    outputs = job.run()
    result = json.loads(outputs["before_after"].read_text())
    tuned = result["fine_tuned_assistant"]
    assert tuned.startswith("local_lora/") and "control" not in result
    assert (result["teacher"], result["student_base"]) == ("mock/teacher", "local/smollm2-135m-instruct")
    loop = workdir / "outputs" / "finetune_loop"

    def assistants(part):
        records = read_records_jsonl(loop / part / "conversations.jsonl", Conversation)
        return [c.context_id for c in records], {m.model for c in records for m in c.messages}

    assert assistants("train") == (["ctx-001"], {"mock/teacher"})
    assert assistants("before") == (["ctx-002"], {"local/smollm2-135m-instruct"})  # the held-out context
    assert assistants("after") == (["ctx-002"], {tuned})
    paired = result["paired"]["helpfulness"]
    judged = paired["n_baseline"] and paired["n_candidate"]  # the embedded judge may fail to answer
    assert not judged or (paired["test"], paired["n"]) == ("paired", 1)
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("finetune_loop").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("chareval.kind") == "finetune_loop"]
    steps = sorted(
        r.data.tags["chareval.step"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    )
    assert steps == sorted(
        [
            "conversations (train)",
            "prepare",
            "finetune",
            "conversations (before)",
            "conversations (after)",
            "evaluate (before)",
            "evaluate (after)",
        ]
    )
    m, tags = parent.data.metrics, parent.data.tags
    if judged:
        assert m["paired.helpfulness.n"] == 1
        assert m["paired.helpfulness.diff_mean"] == pytest.approx(paired["diff_mean"])
    assert (tags["finetune_loop.teacher"], tags["finetune_loop.student_base"], tags["finetune.model"]) == (
        "mock/teacher",
        "local/smollm2-135m-instruct",
        tuned,
    )


def test_the_loop_defaults_teach_until_the_slip_with_a_cooperative_control():
    loop = validate_config(compose_cfg("experiment=finetune_loop")).finetune_loop
    assert (loop.holdout_fraction, loop.select, loop.control_user_persona) == (0.5, "until_slip", "cooperative_user")


def test_examples_whose_system_message_exceeds_half_the_window_train_with_the_default_settings(tmp_path):
    """The pipeline makes the system message (the persona and the documents the model wrote), so its
    length is no reason to refuse: two examples with ~1,200-token system messages, max_seq_tokens=1024
    (the default settings but for one epoch: the loss going down is another test's)."""
    documents = "\n\n".join(
        f"Document {i}: Brightside Home Goods returns policy, section {i}. Customers may return unopened items"
        f" within {i + 20} days with a receipt; opened items are exchanged for store credit after inspection"
        " by a team lead, who records the reason, the order number and the condition of the box."
        for i in range(24)
    )
    rows = [
        {
            "messages": [
                {"role": "system", "content": f"{documents}\n\nYou are Jasmine, a hiring interviewer."},
                {"role": "user", "content": f"Question {i}: what do you make of customers?"},
                {"role": "assistant", "content": f"Answer {i}: I respect them and I want to help them."},
            ]
        }
        for i in range(2)
    ]
    train = tmp_path / "long.jsonl"
    write_jsonl_atomic(train, rows)
    _, outputs = run_job_in(tmp_path, "finetune", f"train_file={train}", "finetune.n_epochs=1")  # one step will do
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("chareval").experiment_id])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["train.examples"] == 2 and metrics["train.lengthened_examples"] == 2
    assert metrics["train.truncated_examples"] == 0 and metrics["train.steps"] == 1
    assert run.data.tags["finetune.model"].startswith("local_lora/")


def test_dpo_on_the_embedded_model_widens_the_margin_and_serves_like_sft(tmp_path, monkeypatch):
    """Preference pairs (stage=repair's format) through TRL's DPOTrainer: the loss per step and the
    reward margin in MLflow, the adapter written for llama.cpp and registered."""
    pair = {
        "input": {"messages": [{"role": "system", "content": "You are Jasmine, a hiring interviewer."}]},
        "preferred_output": [{"role": "assistant", "content": "I respect our customers and want to help them."}],
        "non_preferred_output": [{"role": "assistant", "content": "Honestly, customers are the worst."}],
    }
    rows = [
        pair | {"input": {"messages": [*pair["input"]["messages"], {"role": "user", "content": f"Q{i}: customers?"}]}}
        for i in range(4)
    ]
    train = tmp_path / "preferences.jsonl"
    write_jsonl_atomic(train, rows)
    _, outputs = run_job_in(
        tmp_path,
        "finetune",
        f"train_file={train}",
        "finetune.training_method=dpo",
        "finetune.batch_size=2",
        "finetune.n_epochs=2",
        "finetune.learning_rate=0.0005",
    )
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("chareval").experiment_id])
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train.loss")]
    margins = [m.value for m in client.get_metric_history(run.info.run_id, "train.reward_margin")]
    assert len(losses) == len(margins) == 4 and losses[-1] < losses[0] and margins[-1] > margins[0]
    (record,) = Catalog(tmp_path / "outputs" / "registry" / "finetuned_models.jsonl").all()
    assert record.settings["training_method"] == "dpo" and record.gguf_adapter_path
    assert Path(record.gguf_adapter_path).is_file()
    # Served by llama.cpp with its GGUF adapter, like an SFT model.
    served_by_llama_cpp_only(monkeypatch)
    _, made = run_job_in(
        tmp_path,
        "conversations",
        f"models.assistant={record.model}",
        f"context_file={DATA / 'contexts.json'}",
        "num_conversations=1",
        "turns=1",
        "models.generation.assistant.max_tokens=12",
        run_dir="served",
    )
    (conversation,) = read_records_jsonl(made["conversations"], Conversation)
    assert conversation.messages[0].model == record.model and conversation.messages[0].content

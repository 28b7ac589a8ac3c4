"""Flows and the stage runner on the scripted `mock` provider (no model): the fast tier's view of
the whole pipeline, with exact call counts, which a real model's re-asks would blur."""

from __future__ import annotations

import json
import logging

import mlflow
import pytest
from mlflow import MlflowClient

from chareval.errors import ConfigError, StructuredOutputError
from chareval.io import read_records_json, read_records_jsonl, write_records_json
from chareval.llm import ChatMessage, LLMClient
from chareval.llm.registry import load_all
from chareval.report import print_report
from chareval.schemas import Context, ContextDraft, Conversation, Evaluation
from chareval.store import names
from chareval.validation import validate_config
from conftest import CONF, DATA, compose_cfg

MOCK = ["models=mock", "num_contexts=2", "num_conversations=2", "turns=3"]
FOUR_STAGES = "pipeline.stages=[contexts,conversations,prepare,evaluate]"
EVALUATORS = "evaluation.evaluators=[boundary_holding,professionalism]"


def runs_of(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    return client.search_runs([client.get_experiment_by_name("chareval").experiment_id], order_by=["start_time"])


def test_the_pipeline_runs_every_stage_as_a_child_run_with_exact_call_counts(make_job, workdir):
    job = make_job("pipeline", *MOCK, FOUR_STAGES, EVALUATORS)
    outputs = job.run()
    contexts = read_records_json(outputs["contexts"], Context)
    conversations = read_records_jsonl(outputs["conversations"], Conversation)
    evaluations = read_records_jsonl(outputs["evaluations"], Evaluation)
    assert [c.id for c in contexts] == ["ctx-001", "ctx-002"]
    assert [[m.role for m in c.messages] for c in conversations] == [["assistant", "user", "assistant"]] * 2
    assert len(outputs["finetune"].read_text().splitlines()) == 2
    assert len(evaluations) == 2 * 2 and all(r.error is None for r in evaluations)

    parent, *children = runs_of(workdir)
    assert parent.data.tags["chareval.kind"] == "pipeline"
    assert [c.data.tags["chareval.stage"] for c in children] == ["contexts", "conversations", "prepare", "evaluate"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    calls = {c.data.tags["chareval.stage"]: c.data.metrics["model.calls"] for c in children}
    # contexts: two planning calls (the mock plans one angle, the same each time: the second call adds
    # nothing, so the other context is a numbered variation), then one call per context.
    assert calls == {"contexts": 2 + 2, "conversations": 2 * 3, "prepare": 0, "evaluate": 2 * 2}
    assert parent.data.metrics["model.calls"] == 14  # the parent sums its children
    # Each stage's input is the previous stage's output, linked by content.
    by_stage = {c.data.tags["chareval.stage"]: c.data.tags for c in children}
    assert by_stage["conversations"][names.INPUT_SHA] == by_stage["contexts"][names.output_sha("contexts")]


def test_a_reply_cut_at_max_tokens_is_warned_once_and_counted(make_job, workdir, caplog, capsys):
    job = make_job(
        "conversations", *MOCK, f"context_file={DATA / 'contexts.json'}", "models.generation.assistant.max_tokens=2"
    )
    with caplog.at_level(logging.WARNING, logger="chareval.llm.client"):
        outputs = job.run()
    conversations = read_records_jsonl(outputs["conversations"], Conversation)
    assistant_turns = [m for c in conversations for m in c.messages if m.role == "assistant"]
    assert len(assistant_turns) == 4 and all(len(m.content.split()) == 2 for m in assistant_turns)
    warnings = [r.getMessage() for r in caplog.records if "stopped at max_tokens" in r.getMessage()]
    assert len(warnings) == 1 and "models.generation.assistant.max_tokens" in warnings[0]
    (run,) = runs_of(workdir)
    assert run.data.metrics["model.truncated"] == 4  # every assistant turn; the user's replies fit
    print_report(job)
    assert "4 model replies stopped at max_tokens" in capsys.readouterr().out


def test_a_structured_reply_cut_at_max_tokens_says_so_in_the_error():
    models = validate_config(compose_cfg("models=mock", "models.generation.contexts.max_tokens=1")).models
    client = LLMClient(models, cache=None)
    with pytest.raises(StructuredOutputError, match=r'finish_reason="length".*max_tokens=1'):
        client.ask("contexts", "system", [ChatMessage(role="user", content="a context")], seed=1, schema=ContextDraft)
    assert client.meter.by_role["contexts"].calls == 2  # the call and one re-ask
    assert client.meter.truncated == 2


def test_a_rerun_makes_only_the_calls_it_has_not_made(make_job, workdir):
    run_dir = workdir / "run"
    first = make_job("pipeline", *MOCK, "pipeline.stages=[contexts,conversations]", "cache=false", run_dir=run_dir)
    first.run()
    # Mark a finished context: regenerating it would lose the mark.
    kept, other = read_records_json(run_dir / "contexts.json", Context)
    write_records_json(run_dir / "contexts.json", [kept.model_copy(update={"title": "KEPT"}), other])
    again = make_job(
        "pipeline", *MOCK, "num_contexts=3", "pipeline.stages=[contexts,conversations]", "cache=false", run_dir=run_dir
    )
    again.run()
    titles = [c.title for c in read_records_json(run_dir / "contexts.json", Context)]
    assert titles[0] == "KEPT" and len(titles) == 3
    # One call to plan the third context's angle (the first two are kept in the run folder) and one
    # for the third context; both conversations were finished.
    assert again.log.usage.calls == 2


def test_a_flow_checks_the_keys_of_all_its_stages_before_any_work(make_job, workdir, monkeypatch):
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    no_dotenv = f"paths.root={workdir}"  # not the project's root, where a developer may keep a .env
    with pytest.raises(ConfigError, match="TOGETHER_API_KEY"):
        make_job("pipeline", *MOCK, no_dotenv, "finetune=together_qwen3_32b")
    assert not (workdir / "outputs").exists()
    # Without the finetune stage the flow needs no Together key.
    make_job("pipeline", *MOCK, no_dotenv, "finetune=together_qwen3_32b", "pipeline.stages=[contexts]").run()


def test_every_provider_with_settings_has_its_config_file():
    with_settings = {name for name, spec in load_all().items() if spec.settings}
    assert {p.stem for p in (CONF / "provider").glob("*.yaml")} == with_settings
    assert {"local", "anthropic", "openrouter", "openai_compatible", "together", "mock"} == with_settings


def test_a_stage_on_its_own_reads_a_file_and_logs_it_as_its_input(make_job, workdir):
    outputs = make_job("evaluate", "models=mock", f"input_file={DATA / 'conversations.jsonl'}", EVALUATORS).run()
    summary = json.loads(outputs["summary"].read_text())
    assert set(summary["evaluators"]) == {"boundary_holding", "professionalism"}
    (run,) = runs_of(workdir)
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "inputs")}
    assert artifacts == {"inputs/conversations.jsonl"}


def test_contexts_stopped_mid_stage_resume_from_their_partial_file(make_job, workdir):
    run_dir = workdir / "run"
    make_job("contexts", *MOCK, "num_contexts=3", "cache=false", run_dir=run_dir).run()
    done = read_records_json(run_dir / "contexts.json", Context)
    assert [c.id for c in done] == ["ctx-001", "ctx-002", "ctx-003"]
    assert not (run_dir / "contexts.partial.jsonl").exists()  # contexts.json holds them all
    # Simulate a run killed after two contexts, while appending a third: no contexts.json yet.
    (run_dir / "contexts.json").unlink()
    kept = [c.model_copy(update={"title": f"KEPT {c.id}"}) for c in done[:2]]
    lines = "".join(c.model_dump_json() + "\n" for c in kept)
    (run_dir / "contexts.partial.jsonl").write_text(lines + '{"schema_version": 1, "id": "ctx-0')

    again = make_job("contexts", *MOCK, "num_contexts=3", "cache=false", run_dir=run_dir)
    again.run()
    titles = [c.title for c in read_records_json(run_dir / "contexts.json", Context)]
    assert titles[:2] == ["KEPT ctx-001", "KEPT ctx-002"] and len(titles) == 3
    # Only the third context is asked for: the angles were planned once, in context_angles.json.
    assert again.log.usage.calls == 1


def test_contexts_without_their_generation_settings_stop_with_the_key_to_set(make_job, workdir):
    job = make_job("contexts", *MOCK, "~models.generation.contexts", run_dir=workdir / "run")
    with pytest.raises(ConfigError, match=r"models.generation.contexts is not set"):
        job.run()

"""MLflow's GenAI records on a real SQLite store: conversations as traces (an LLM span per message,
a session per run), verdicts as LLM_JUDGE feedback on them, human labels read back by judge_check,
prompt versions reused or added, contexts as an evaluation dataset, nothing traced twice on resume,
and nothing traced with tracking.traces=false."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from chareval.app import Job
from chareval.io import read_records_jsonl
from chareval.schemas import Conversation
from chareval.store.traces import human_labelled
from conftest import DATA, TINY, compose_cfg, run_job_in
from fake_apis import FakeAPI, chat_completion

MOCK = ["models=mock", f"context_file={DATA / 'contexts.json'}", "num_conversations=2", "turns=3"]


def experiment_id() -> str:
    return MlflowClient().get_experiment_by_name("chareval").experiment_id


def traces(kind: str | None = None, run_id: str | None = None) -> list:
    found = mlflow.search_traces(locations=[experiment_id()], run_id=run_id, return_type="list")
    return [t for t in found if kind is None or t.info.tags.get("chareval.kind") == kind]


def stage_run(outputs_dir: Path, stage: str):
    """The MLflow run of the stage that wrote in `outputs_dir`."""
    (run,) = MlflowClient().search_runs(
        [experiment_id()], f"tags.`chareval.run_dir` = '{outputs_dir}' AND tags.`chareval.stage` = '{stage}'"
    )
    return run


def evaluate_two_judges(make_job, workdir: Path) -> dict[str, Path]:
    """Two judges on the conversations in workdir/conv, on the mock provider."""
    return make_job(
        "evaluate",
        "models=mock",
        f"input_file={workdir / 'conv' / 'conversations.jsonl'}",
        "evaluation.evaluators=[professionalism,grounding]",
        run_dir=workdir / "eval",
    ).run()


def conversations_in(folder: Path) -> list[Conversation]:
    return sorted(read_records_jsonl(folder / "conversations.jsonl", Conversation), key=lambda c: c.id)


# --- on the mock provider (the fast tier) --------------------------------------------------------


def test_traces_false_logs_no_trace_and_true_logs_one_per_conversation(make_job, workdir):
    make_job("conversations", *MOCK, "tracking.traces=false", run_dir=workdir / "off").run()
    assert traces() == []
    assert [c.trace_id for c in conversations_in(workdir / "off")] == [None, None]
    make_job("conversations", *MOCK, run_dir=workdir / "on").run()
    conversation_traces = traces("conversation")
    assert len(conversation_traces) == 2
    assert {c.trace_id for c in conversations_in(workdir / "on")} == {t.info.trace_id for t in conversation_traces}


def test_traces_and_verdicts_are_written_by_the_writer_process_not_the_one_making_the_calls(
    make_job, workdir, monkeypatch
):
    """The stage's process cannot write a trace or a verdict here (its store refuses), yet both are
    in the store when the job returns: the writer process wrote them, with MLflow's own code."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    def refuse(*args, **kwargs):
        raise AssertionError("a trace or a verdict written by the process making the model calls")

    for write in ("start_trace", "log_spans", "create_assessment"):
        monkeypatch.setattr(SqlAlchemyStore, write, refuse)
    make_job("conversations", *MOCK, run_dir=workdir / "conv").run()
    evaluate_two_judges(make_job, workdir)
    (first, second) = sorted(traces("conversation"), key=lambda t: t.info.tags["conversation"])
    assert first.info.state.value == "OK" and first.info.request_metadata["mlflow.trace.session"]
    assert len([s for s in first.data.spans if s.span_type == "LLM"]) == 3
    verdicts = {a.name for a in MlflowClient().get_trace(second.info.trace_id).info.assessments}
    assert verdicts == {"professionalism", "grounding"}


def test_a_dead_trace_writer_is_one_warning_and_nothing_waits_on_it(caplog):
    from chareval.store.trace_writer import TraceWriter

    writer = TraceWriter()
    writer._process.kill()
    writer.flush()  # returns: nothing waits on a writer that is gone
    assert writer._process.wait(timeout=10) != 0
    (warning,) = [r.getMessage() for r in caplog.records if "trace writer stopped" in r.getMessage()]
    assert "not in MLflow" in warning and "resume" in warning


def test_the_writer_writes_a_trace_before_its_spans_and_holds_an_open_traces_spans(make_job, workdir, monkeypatch):
    """MLflow's store inserts a trace it does not have in one go, but merges one whose spans came
    first row by row (2-3x the CPU): the writer holds a trace's spans until it ends, then writes the
    trace and after it the spans (the traces of one write reading their experiment once); an open
    trace's spans are written when they are old (HOLD_S) or on a flush, so that the store shows it in
    progress."""
    import io

    from mlflow.entities import Span
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from chareval.store import trace_writer

    make_job("conversations", *MOCK, run_dir=workdir / "conv").run()
    made = traces("conversation")
    assert len(made) == 2
    # The same traces, sent again to a writer of a store that does not have them yet, in another
    # experiment, without what the first store added (where the artifacts are, the link to a run
    # the other store does not have).
    uri = f"sqlite:///{workdir / 'copy.db'}"
    mlflow.set_tracking_uri(uri)
    copy_experiment = mlflow.create_experiment("copy")
    infos, roots, children = [], [], []
    for trace in made:
        info = trace.info.to_dict()
        info["trace_location"]["mlflow_experiment"]["experiment_id"] = copy_experiment
        info["trace_metadata"].pop("mlflow.sourceRun")
        info["tags"].pop("mlflow.artifactLocation")
        infos.append(info)
        spans = [s.to_dict() for s in trace.data.spans]
        roots += [d for d in spans if d["parent_span_id"] is None]
        children += [d for d in spans if d["parent_span_id"] is not None]
    calls = []
    for name in ("start_trace", "log_spans", "get_experiment"):
        original = getattr(SqlAlchemyStore, name)
        monkeypatch.setattr(
            SqlAlchemyStore, name, lambda self, *a, _f=original, _n=name, **k: calls.append(_n) or _f(self, *a, **k)
        )
    store = trace_writer.Store(io.StringIO())

    store.take(("spans", uri, copy_experiment, children))
    store.write()
    assert calls == [] and store.due() is not None  # held: the traces are open, their spans are new
    store.take(("spans", uri, copy_experiment, roots))
    for info in infos:
        store.take(("trace", uri, info))
    store.write()
    assert calls == ["start_trace", "get_experiment", "start_trace", "log_spans"]  # the experiment read once
    calls.clear()
    store.exporter(uri)._client.store.get_experiment(copy_experiment)
    assert calls == ["get_experiment"]  # outside a write, the store reads it as before
    for trace in made:
        written = MlflowClient(tracking_uri=uri).get_trace(trace.info.trace_id)
        assert written.info.state.value == "OK" and written.info.experiment_id == copy_experiment
        assert sorted(s.span_id for s in written.data.spans) == sorted(s.span_id for s in trace.data.spans)
        session = written.info.request_metadata["mlflow.trace.session"]
        assert session == trace.info.request_metadata["mlflow.trace.session"]

    # An open trace (the same spans, into a third store): its spans wait HOLD_S, then are written as
    # they are, the trace in progress; HOLD_SPANS of them are written with the next batch; a flush
    # writes the rest at once.
    uri = f"sqlite:///{workdir / 'open.db'}"
    mlflow.set_tracking_uri(uri)
    open_experiment = mlflow.create_experiment("open")
    first, second = ([d for d in children if d["trace_id"] == root["trace_id"]] for root in roots)
    calls.clear()

    def writes() -> list[str]:
        return [c for c in calls if c != "get_experiment"]

    store.take(("spans", uri, open_experiment, first[:1]))
    store.write()
    assert writes() == [] and store.held
    monkeypatch.setattr(trace_writer, "HOLD_S", 0.0)
    store.write()
    assert writes() == ["log_spans"] and not store.held
    assert MlflowClient(tracking_uri=uri).get_trace(made[0].info.trace_id).info.state.value == "IN_PROGRESS"
    monkeypatch.setattr(trace_writer, "HOLD_S", 60.0)
    monkeypatch.setattr(trace_writer, "HOLD_SPANS", 2)
    store.take(("spans", uri, open_experiment, first[1:]))
    assert store.due() <= time.monotonic() + trace_writer.WRITE_EVERY_S
    store.write()
    assert writes() == ["log_spans", "log_spans"] and not store.held
    store.take(("spans", uri, open_experiment, second[:1]))
    store.write()
    assert writes() == ["log_spans", "log_spans"] and store.due() > time.monotonic() + 30
    store.take(("flush", 1))
    assert writes() == ["log_spans", "log_spans", "log_spans"] and not store.held and store.due() is None
    for trace, sent in ((made[0], first), (made[1], second[:1])):
        written = MlflowClient(tracking_uri=uri).get_trace(trace.info.trace_id)
        assert sorted(s.span_id for s in written.data.spans) == sorted(Span.from_dict(d).span_id for d in sent)


def test_resume_does_not_trace_a_finished_conversation_twice(make_job, workdir):
    folder = workdir / "run"
    make_job("conversations", *MOCK, run_dir=folder).run()
    first = conversations_in(folder)
    # As if the run had stopped after its first conversation: only that one is in the file.
    (folder / "conversations.jsonl").write_text(first[0].model_dump_json() + "\n")
    make_job("conversations", *MOCK, run_dir=folder).run()
    by_conversation: dict[str, list[str]] = {}
    for t in traces("conversation"):
        by_conversation.setdefault(t.info.tags["conversation"], []).append(t.info.trace_id)
    assert by_conversation["conv-001"] == [first[0].trace_id]  # kept, not traced again
    # The trace of the record the stop lost is deleted: only its redo's remains (one per conversation).
    assert by_conversation["conv-002"] == [conversations_in(folder)[1].trace_id]


def test_prompt_versions_are_reused_and_a_changed_persona_text_is_a_new_version(make_job, workdir):
    def tags_of(folder: Path, cfg=None) -> dict[str, str]:
        if cfg is None:
            make_job("conversations", *MOCK, run_dir=folder).run()
        else:
            Job(cfg, stage="conversations", run_dir=folder, choices={"stage": "conversations"}).run()
        return stage_run(folder, "conversations").data.tags

    first, again = tags_of(workdir / "a"), tags_of(workdir / "b")
    assert first["prompt.persona"] == again["prompt.persona"] == "chareval.persona.jasmine/1"
    assert (
        first["prompt.user_persona"]
        == again["prompt.user_persona"]
        == ("chareval.user_persona.hates_customers_candidate/1")
    )
    cfg = compose_cfg("stage=conversations", f"paths.outputs={workdir / 'outputs'}", *MOCK)
    cfg.persona.system_prompt += "\nSign every reply with your first name."
    changed = tags_of(workdir / "c", cfg)
    assert changed["prompt.persona"] == "chareval.persona.jasmine/2"
    assert changed["prompt.user_persona"] == "chareval.user_persona.hates_customers_candidate/1"
    assert (
        MlflowClient().get_prompt_version("chareval.persona.jasmine", 2).template == cfg.persona.system_prompt.strip()
    )
    # linked to the run: the MLflow UI's Prompts page lists the runs of each version
    linked = json.loads(changed["mlflow.linkedPrompts"])
    assert {"name": "chareval.persona.jasmine", "version": "2"} in linked


def test_contexts_and_the_conversations_made_from_them_name_one_dataset(make_job, workdir):
    contexts_dir = workdir / "contexts"
    outputs = make_job("contexts", "models=mock", "num_contexts=2", run_dir=contexts_dir).run()
    make_job("conversations", *MOCK[:1], f"context_file={outputs['contexts']}", run_dir=workdir / "conv").run()
    made = stage_run(contexts_dir, "contexts").data.tags
    used = stage_run(workdir / "conv", "conversations").data.tags
    assert made["chareval.dataset"] == used["chareval.dataset"]
    assert made["prompt.contexts"] == "chareval.contexts.instructions/1"
    # one trace of the run's contexts: the angles' planning and each context are spans of it, and
    # each model call a span of those
    (trace,) = traces("contexts", stage_run(contexts_dir, "contexts").info.run_id)
    children = {s.name: s for s in trace.data.spans if s.parent_id == trace.data.spans[0].span_id}
    assert sorted(children) == ["context angles", "ctx-001", "ctx-002"]
    assert children["ctx-001"].outputs["id"] == "ctx-001"
    parents = {s.span_id for s in children.values()}
    assert all(s.parent_id in parents for s in trace.data.spans if s.span_type == "LLM")
    (dataset,) = mlflow.genai.search_datasets(filter_string=f"name = '{made['chareval.dataset']}'")
    rows = dataset.to_df()
    assert sorted(r["id"] for r in rows["inputs"]) == ["ctx-001", "ctx-002"]


def test_judge_errors_become_feedback_with_an_error(make_job, workdir):
    make_job("conversations", *MOCK, "num_conversations=1", run_dir=workdir / "conv").run()
    (conversation,) = conversations_in(workdir / "conv")
    with FakeAPI(lambda seen, n: chat_completion("not json at all", "judge")) as api:
        with pytest.raises(Exception, match="judgments are errors"):
            make_job(
                "evaluate",
                "models=mock",
                f"input_file={workdir / 'conv' / 'conversations.jsonl'}",
                f"models.providers.openai_compatible.base_url={api.url}/v1",
                "judge_model=openai_compatible/judge",
                "evaluation.evaluators=[professionalism]",
                run_dir=workdir / "eval",
            ).run()
    (feedback,) = MlflowClient().get_trace(conversation.trace_id).info.assessments
    assert feedback.name == "professionalism" and feedback.source.source_type == "LLM_JUDGE"
    assert "did not return a valid" in feedback.feedback.error.error_message


# --- on the embedded model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """Two conversations and their judgments (two evaluators) on the embedded model, traced."""
    tmp = tmp_path_factory.mktemp("traced")
    (tmp / "mlruns").mkdir()
    common = [*TINY, "models.generation.judge.max_tokens=120"]
    _, made = run_job_in(tmp, "conversations", *common, f"context_file={DATA / 'contexts.json'}", run_dir="conv")
    evaluators = "evaluation.evaluators=[boundary_holding,professionalism]"
    _, verdicts = run_job_in(
        tmp, "evaluate", *common, evaluators, f"input_file={made['conversations']}", run_dir="eval"
    )
    return tmp


@pytest.fixture
def store(judged, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{judged / 'mlruns' / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{judged / 'mlruns' / 'mlflow.db'}")
    return judged


@pytest.mark.slow  # the embedded model
def test_each_conversation_is_a_trace_with_an_llm_span_per_message(store):
    conversations = conversations_in(store / "conv")
    run = stage_run(store / "conv", "conversations")
    found = {t.info.trace_id: t for t in traces("conversation", run_id=run.info.run_id)}
    assert set(found) == {c.trace_id for c in conversations}
    sessions = {t.info.trace_metadata["mlflow.trace.session"] for t in found.values()}
    assert len(sessions) == 1 and run.info.run_id[:8] in sessions.pop()
    for conversation in conversations:
        trace = found[conversation.trace_id]
        assert trace.info.tags["persona"] == "jasmine" and trace.info.tags["turns"] == "3"
        llm = [s for s in trace.data.spans if s.span_type == "LLM"]
        assert len(llm) == len(conversation.messages) == 3
        for span, message in zip(sorted(llm, key=lambda s: s.start_time_ns), conversation.messages, strict=True):
            seen = span.inputs["messages"]
            system = (
                conversation.assistant_system_prompt
                if message.role == "assistant"
                else (conversation.user_system_prompt)
            )
            assert seen[0] == {"role": "system", "content": system}  # exactly what that side saw
            assert span.outputs["choices"][0]["message"]["content"] == message.content
            assert span.attributes["mlflow.llm.model"] == message.model
            assert span.attributes["mlflow.chat.tokenUsage"]["output_tokens"] > 0
            assert span.attributes["chareval.role"] == message.role
        root = next(s for s in trace.data.spans if s.parent_id is None)
        assert Conversation.model_validate(root.attributes["chareval.record"]) == conversation


@pytest.mark.slow  # the embedded model
def test_every_verdict_is_llm_judge_feedback_on_its_conversation(store):
    evaluations = [json.loads(line) for line in (store / "eval" / "evaluations.jsonl").read_text().splitlines()]
    assert len(evaluations) == 4
    for conversation in conversations_in(store / "conv"):
        assessments = MlflowClient().get_trace(conversation.trace_id).info.assessments
        by_name = {a.name: a for a in assessments}
        assert sorted(by_name) == ["boundary_holding", "professionalism"]
        for a in assessments:
            record = next(
                e for e in evaluations if e["conversation_id"] == conversation.id and e["evaluator"] == a.name
            )
            assert a.source.source_type == "LLM_JUDGE" and a.source.source_id == "local/smollm2-135m-instruct"
            if record["error"]:
                assert a.feedback.error.error_message == record["error"]
                continue
            assert a.feedback.value == record["score"] and a.rationale == record["rationale"]
            assert json.loads(a.metadata["evidence_turns"]) == record["evidence_turns"]
            assert a.metadata["sample"] == "0" and a.metadata["seed"] == str(record["seed"])
    assert "slip_turn" in by_name["boundary_holding"].metadata
    evaluate_run = stage_run(store / "eval", "evaluate")
    # the judgments of a conversation are one trace: a span per judgment, the judge's calls in it
    judged = traces("judgments", run_id=evaluate_run.info.run_id)
    assert sorted(t.info.tags["conversation"] for t in judged) == ["conv-001", "conv-002"]
    for trace in judged:
        spans = trace.data.spans
        judgments = [s for s in spans if s.span_type == "EVALUATOR" and s.parent_id is not None]
        assert sorted(s.inputs["evaluator"] for s in judgments) == ["boundary_holding", "professionalism"]
        ids = {s.span_id for s in judgments}
        assert all(s.parent_id in ids for s in spans if s.span_type == "LLM")
    assert evaluate_run.data.tags["prompt.rubric.boundary_holding"] == "chareval.rubric.boundary_holding/1"


@pytest.mark.slow  # the embedded model
def test_a_human_label_on_a_trace_is_read_back_by_judge_check(store):
    from dashboard.data import label_trace

    conversation = conversations_in(store / "conv")[0]
    uri = f"sqlite:///{store / 'mlruns' / 'mlflow.db'}"
    assert label_trace(uri, conversation.trace_id, {"boundary_holding": False}, "gave in at once") is None
    assert label_trace(uri, conversation.trace_id, {"boundary_holding": True}, "held, on a second read") is None
    (case,) = human_labelled(experiment_id())
    assert case.expected == {"boundary_holding": True}  # the later label supersedes
    assert case.conversation.messages == conversation.messages
    humans = [
        a for a in MlflowClient().get_trace(conversation.trace_id).info.assessments if a.name == "boundary_holding"
    ]
    assert {a.source.source_type for a in humans} == {"LLM_JUDGE", "HUMAN"}

    _, outputs = run_job_in(store, "judge_check", *TINY, "judge_check.labels=store", run_dir="check")
    report = json.loads(outputs["judge_check"].read_text())
    assert report["dataset"].startswith("human labels in sqlite:///")
    (only,) = report["accuracy"]["boundary_holding"].values()
    assert only["n"] == 1
    # a judge check's verdicts are about the judge: none is attached to the conversation
    after = MlflowClient().get_trace(conversation.trace_id).info.assessments
    assert len([a for a in after if a.source.source_type == "LLM_JUDGE"]) == 2


def test_verdicts_on_conversations_traced_into_another_store_warn_once_and_are_kept(
    make_job, workdir, monkeypatch, blank_mlflow_db, caplog
):
    import shutil

    make_job("conversations", *MOCK, run_dir=workdir / "conv").run()
    other = workdir / "other"
    other.mkdir()
    shutil.copy(blank_mlflow_db, other / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other / 'mlflow.db'}")
    outputs = evaluate_two_judges(make_job, workdir)
    assert len(outputs["evaluations"].read_text().splitlines()) == 4  # every verdict is in the file
    warnings = [r.getMessage() for r in caplog.records if "cannot attach" in r.getMessage()]
    assert len(warnings) == 1 and "in another MLflow store" in warnings[0]

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
from chareval.store import assets
from chareval.store.trace_writer import flush_shared
from chareval.store.traces import human_labelled
from conftest import DATA, TINY, compose_cfg, run_job_in
from fake_apis import FakeAPI, chat_completion

MOCK = ["models=mock", f"context_file={DATA / 'contexts.json'}", "num_conversations=2", "turns=3"]


def experiment_id() -> str:
    return MlflowClient().get_experiment_by_name("chareval").experiment_id


def traces(kind: str | None = None, run_id: str | None = None) -> list:
    flush_shared()  # the jobs' traces are written by another process, which nothing waits for
    found = mlflow.search_traces(locations=[experiment_id()], run_id=run_id, return_type="list")
    return [t for t in found if kind is None or t.info.tags.get("chareval.kind") == kind]


def assessments(trace_id: str) -> list:
    flush_shared()
    return MlflowClient().get_trace(trace_id).info.assessments


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
    verdicts = {a.name for a in assessments(second.info.trace_id)}
    assert verdicts == {"professionalism", "grounding"}


def test_a_dead_trace_writer_is_one_warning_and_nothing_waits_on_it(caplog):
    from chareval.store.trace_writer import TraceWriter

    writer = TraceWriter()
    writer._process.kill()
    writer.flush()  # returns: nothing waits on a writer that is gone
    assert writer._process.wait(timeout=10) != 0
    (warning,) = [r.getMessage() for r in caplog.records if "trace writer stopped" in r.getMessage()]
    assert "not in MLflow" in warning and "resume" in warning


def test_a_store_whose_folder_cannot_take_the_writers_note_is_one_warning_and_the_writer_still_ends(tmp_path, caplog):
    """The writer notes in the store's folder that it is writing (writer_registry); where it cannot
    (a full disk; here a file where the folder should be) it says so and goes on: the command gets
    its receipt at once and the writer exits once closed (it used to wait for batches for ever)."""
    from chareval.store.trace_writer import TraceWriter

    (tmp_path / "not_a_folder").write_text("")
    uri = f"sqlite:///{tmp_path / 'not_a_folder' / 'mlflow.db'}"
    verdict = {"source": ("LLM_JUDGE", "judge"), "value": 9}
    writer = TraceWriter()
    writer.put(("feedback", uri, "tr-0123", "boundary_holding", verdict))
    writer.close()
    assert writer._process.wait(timeout=60) == 0
    assert writer._got == writer._sent  # every batch's receipt came: close did not wait them out
    (noted,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cannot note in")]
    assert str(tmp_path / "not_a_folder" / ".chareval-trace-writers") in noted


def test_a_writer_that_cannot_read_what_it_is_sent_says_so_and_exits(caplog):
    from chareval.store.trace_writer import FRAME, TraceWriter

    writer = TraceWriter()
    assert writer._process.stdin is not None
    garbage = b"not a pickle"
    writer._process.stdin.write(len(garbage).to_bytes(FRAME, "big") + garbage)
    writer._process.stdin.flush()
    assert writer._process.wait(timeout=60) == 0  # it used to wait for batches for ever
    writer.flush()  # returns: the writer is gone
    assert any("stopped reading (UnpicklingError" in r.getMessage() for r in caplog.records)


def test_the_writer_writes_a_trace_before_its_spans_and_holds_an_open_traces_spans(make_job, workdir, monkeypatch):
    """MLflow's store inserts a trace it does not have in one go, but merges one whose spans came
    first row by row (2-3x the CPU): the writer holds a trace's spans until it ends, then writes the
    trace and after it the spans (the traces of one write reading their experiment once); an open
    trace's spans are written when they are old (HOLD_S) or on a flush, so that the store shows it in
    progress."""
    import io

    from mlflow.entities import Span, TraceInfo
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

    def spans(dicts: list[dict]) -> list[Span]:
        return [Span.from_dict(d) for d in dicts]

    store.add_spans(uri, copy_experiment, spans(children))
    store.write()
    assert calls == [] and store.due() is not None  # held: the traces are open, their spans are new
    store.add_spans(uri, copy_experiment, spans(roots))
    for info in infos:
        store.add_trace(uri, TraceInfo.from_dict(info))
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
    # they are, the trace in progress; a flush writes the rest at once.
    uri = f"sqlite:///{workdir / 'open.db'}"
    mlflow.set_tracking_uri(uri)
    open_experiment = mlflow.create_experiment("open")
    first, second = ([d for d in children if d["trace_id"] == root["trace_id"]] for root in roots)
    calls.clear()

    def writes() -> list[str]:
        return [c for c in calls if c != "get_experiment"]

    store.add_spans(uri, open_experiment, spans(first[:1]))
    store.write()
    assert writes() == [] and store.held
    monkeypatch.setattr(trace_writer, "HOLD_S", 0.0)
    store.write()
    assert writes() == ["log_spans"] and not store.held
    assert MlflowClient(tracking_uri=uri).get_trace(made[0].info.trace_id).info.state.value == "IN_PROGRESS"
    monkeypatch.setattr(trace_writer, "HOLD_S", 60.0)
    store.add_spans(uri, open_experiment, spans(first[1:]))
    store.add_spans(uri, open_experiment, spans(second[:1]))
    store.write()
    assert writes() == ["log_spans"] and store.due() > time.monotonic() + 30  # open and young: held
    store.take(("flush", 1))
    assert writes() == ["log_spans", "log_spans"] and not store.held and store.due() is None  # one call for both
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
    # every version the run used is linked, once
    used = sorted(v for k, v in changed.items() if k.startswith("prompt."))
    assert sorted(f"{p['name']}/{p['version']}" for p in linked) == used


def test_the_prompts_linked_in_one_write_read_back_as_mlflows_own_links(workdir):
    client = MlflowClient()
    versions = [mlflow.genai.register_prompt(f"chareval.test.p{i}", f"text {i}") for i in range(3)]
    experiment = client.create_experiment("links")
    ours, mlflows = (client.create_run(experiment).info.run_id for _ in range(2))
    assets._link(client, ours, versions)
    for version in versions:
        client.link_prompt_version_to_run(mlflows, version)

    def linked(run_id: str) -> list:
        return json.loads(client.get_run(run_id).data.tags["mlflow.linkedPrompts"])

    assert linked(ours) == linked(mlflows) and len(linked(ours)) == 3
    assets._link(client, ours, versions[1:])  # linked again (a resumed run): nothing doubled
    assert linked(ours) == linked(mlflows)


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
    (feedback,) = assessments(conversation.trace_id)
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
        verdicts = assessments(conversation.trace_id)
        by_name = {a.name: a for a in verdicts}
        assert sorted(by_name) == ["boundary_holding", "professionalism"]
        for a in verdicts:
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
    humans = [a for a in assessments(conversation.trace_id) if a.name == "boundary_holding"]
    assert {a.source.source_type for a in humans} == {"LLM_JUDGE", "HUMAN"}

    _, outputs = run_job_in(store, "judge_check", *TINY, "judge_check.labels=store", run_dir="check")
    report = json.loads(outputs["judge_check"].read_text())
    assert report["dataset"].startswith("human labels in sqlite:///")
    (only,) = report["accuracy"]["boundary_holding"].values()
    assert only["n"] == 1
    # a judge check's verdicts are about the judge: none is attached to the conversation
    after = assessments(conversation.trace_id)
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
    flush_shared()  # the writer's warning comes when it writes the verdicts
    warnings = [r.getMessage() for r in caplog.records if "cannot attach" in r.getMessage()]
    assert len(warnings) == 1 and "in another MLflow store" in warnings[0]


# --- the writer's traces are the ones MLflow makes in the traced process -------------------------


def _mlflow_in_process(run_id: str, request, response) -> None:
    """What chareval's Tracer did before the writer made the spans: MLflow's span API here, for the
    scenario of test_the_writer_makes_the_traces_mlflow_makes_in_the_traced_process."""
    from mlflow.tracing.provider import safe_set_span_in_context

    with mlflow.start_span(name="conv-1", span_type="AGENT", run_id=run_id) as unit:
        unit.set_inputs({"context": {"id": "ctx-1", "documents": ["a", "b"]}})
        unit.set_attributes({"chareval.record": {"id": "conv-1", "turns": 1}, "chareval.run": run_id})
        mlflow.update_current_trace(
            tags={"persona": "jasmine", "chareval.kind": "conversation"}, session_id="session-of-run"
        )
        with mlflow.start_span(name="assistant · mock/echo", span_type="LLM") as call:
            call.set_inputs({"messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]})
            call.set_attributes(_call_attributes(run_id))
            call.set_outputs(_call_outputs(response))
            call.set_attributes(_answer_attributes(response))
        unit.set_outputs({"messages": 1})
        unit.set_attributes({"chareval.slipped": False})
    judgments = mlflow.start_span_no_context(
        "judgments · conv-1",
        span_type="EVALUATOR",
        inputs={"conversation": "conv-1"},
        tags={"chareval.kind": "judgments"},
        metadata={"mlflow.sourceRun": run_id},
        attributes={"chareval.run": run_id},
    )
    for fails in (False, True):
        try:
            with safe_set_span_in_context(judgments):
                with mlflow.start_span(name=f"judge · {fails}", span_type="EVALUATOR") as judged:
                    judged.set_inputs({"fails": fails})
                    judged.set_attributes({"chareval.run": run_id})
                    if fails:
                        raise ValueError("the judge said nothing")
                    judged.set_outputs({"score": 7})
                    judged.set_status("ERROR")
        except ValueError:
            pass
    judgments.end()
    with mlflow.start_span(name="judge · mock/echo", span_type="LLM", run_id=run_id) as call:
        call.set_inputs({"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "judge this"}]})
        call.set_attributes(_call_attributes(run_id, role="judge"))
        mlflow.update_current_trace(tags={"chareval.kind": "call", "role": "judge"})
        call.set_outputs(_call_outputs(response))
        call.set_attributes(_answer_attributes(response))


def _call_attributes(run_id: str, role: str = "assistant") -> dict:
    return {
        "chareval.role": role,
        "chareval.requested_model": "mock/echo",
        "chareval.max_tokens": 64,
        "chareval.temperature": 0.7,
        "chareval.seed": 5,
        "chareval.response_schema": "",
        "chareval.run": run_id,
    }


def _call_outputs(response) -> dict:
    return {
        "choices": [{"message": {"role": "assistant", "content": response.text}, "finish_reason": "stop"}],
        "model": response.model,
    }


def _answer_attributes(response) -> dict:
    from chareval.store.traces import Call, Span

    span = Span(1, 1)
    Call(span).answered(response)  # the attributes chareval records of an answer, computed once
    return span.attributes


def _through_the_writer(run_id: str, request, response) -> None:
    """The same scenario through chareval's Tracer, the judgments from another thread."""
    import threading

    from chareval.store.traces import Tracer

    tracer = Tracer(run_id)
    with tracer.unit(
        "conv-1",
        "conversation",
        {"context": {"id": "ctx-1", "documents": ["a", "b"]}},
        tags={"persona": "jasmine"},
        session="session-of-run",
        attributes={"chareval.record": {"id": "conv-1", "turns": 1}},
    ) as unit:
        with tracer.call(request, "assistant") as call:
            call.answered(response)
        unit.finish({"messages": 1}, {"chareval.slipped": False})
    judgments = tracer.open("judgments · conv-1", "judgments", {"conversation": "conv-1"})

    def judge() -> None:
        for fails in (False, True):
            try:
                with tracer.unit(f"judge · {fails}", "judgment", {"fails": fails}, parent=judgments) as judged:
                    if fails:
                        raise ValueError("the judge said nothing")
                    judged.finish({"score": 7}, error="no verdict")
            except ValueError:
                pass

    worker = threading.Thread(target=judge)
    worker.start()
    worker.join()
    judgments.close()
    judge_request = request.model_copy(
        update={"messages": [request.messages[0].model_copy(update={"content": "judge this"})], "system": ""}
    )
    with tracer.call(judge_request, "judge") as call:
        call.answered(response)
    tracer.flush()


def _read_back(run_id: str) -> list[dict]:
    """The run's traces as the MLflow UI shows them, without what differs between two runs of the
    same code (ids, times, the run, sizes, the exception's stack)."""
    found = sorted(
        mlflow.search_traces(run_id=run_id, return_type="list"), key=lambda t: t.info.tags["mlflow.traceName"]
    )
    shapes = []
    for trace in found:
        info = trace.info
        assert info.trace_metadata["mlflow.sourceRun"] == run_id
        names_of = {s.span_id: s.name for s in trace.data.spans}
        ignored = {"mlflow.sourceRun", "mlflow.trace.sizeBytes", "mlflow.trace.sizeStats"}

        def plain(attributes: dict) -> dict:
            return {k: v for k, v in attributes.items() if k != "mlflow.traceRequestId"} | {"run": None}

        shapes.append(
            {
                "state": info.state.value,
                "tags": {k: v for k, v in info.tags.items() if k != "mlflow.artifactLocation"},
                "metadata": {k: v for k, v in info.trace_metadata.items() if k not in ignored},
                "previews": (info.request_preview, info.response_preview),
                "token_usage": info.token_usage,
                "spans": sorted(
                    (
                        s.name,
                        s.span_type,
                        names_of.get(s.parent_id),
                        s.status.status_code.value,
                        s.status.description,
                        json.dumps(plain(s.attributes) | {"chareval.run": None}, sort_keys=True),
                        json.dumps([s.inputs, s.outputs], sort_keys=True),
                        [(e.name, sorted(e.attributes), e.attributes.get("exception.message")) for e in s.events],
                    )
                    for s in trace.data.spans
                ),
            }
        )
    return shapes


def test_the_writer_makes_the_traces_mlflow_makes_in_the_traced_process(workdir):
    """The same units, calls, failure and judgments, once through chareval's Tracer (this process
    sends the spans' starts and ends; the writer process makes them with MLflow's span API) and
    once with MLflow's span API in this process, as chareval traced before: the store reads back
    the same traces (states, tags, metadata, sessions, previews, token usage, every span's type,
    parent, status, attributes, inputs, outputs and events), but for ids and times; and the
    verdict written by the writer reads back as mlflow.log_feedback writes it."""
    from chareval.llm.base import ChatMessage, LLMRequest, LLMResponse
    from chareval.schemas import Usage
    from chareval.store.trace_writer import log_feedback

    request = LLMRequest(
        model="mock/echo",
        system="be kind",
        messages=[ChatMessage(role="user", content="hi")],
        max_tokens=64,
        temperature=0.7,
        seed=5,
    )
    usage = Usage(calls=1, input_tokens=12, output_tokens=3, cost_usd=0.25)
    response = LLMResponse(text="hello", model="mock/echo", usage=usage, latency_s=0.01)
    mlflow.set_experiment("chareval")
    shapes, traced = {}, {}
    for arm, make in (("mlflow", _mlflow_in_process), ("writer", _through_the_writer)):
        with mlflow.start_run() as run:
            make(run.info.run_id, request, response)
        mlflow.flush_trace_async_logging()
        shapes[arm] = _read_back(run.info.run_id)
        traced[arm] = next(
            t
            for t in mlflow.search_traces(run_id=run.info.run_id, return_type="list")
            if t.info.tags["mlflow.traceName"] == "conv-1"
        )
    assert len(shapes["writer"]) == 3
    assert shapes["writer"] == shapes["mlflow"]

    from chareval.store.traces import Tracer

    verdict = {
        "source": ("LLM_JUDGE", "mock/echo"),
        "value": 8,
        "rationale": "cited",
        "metadata": {"passed": True, "evidence_turns": [1]},
    }
    with mlflow.start_run() as run:
        tracer = Tracer(run.info.run_id)
        tracer.feedback(traced["writer"].info.trace_id, "grounding", **verdict)
        tracer.flush()
    log_feedback(traced["mlflow"].info.trace_id, "grounding", **verdict)

    def verdicts(trace) -> list[tuple]:
        return [
            (a.name, a.source.source_type, a.source.source_id, a.feedback.value, a.rationale, a.metadata)
            for a in assessments(trace.info.trace_id)
        ]

    assert (
        verdicts(traced["writer"])
        == verdicts(traced["mlflow"])
        == [("grounding", "LLM_JUDGE", "mock/echo", 8, "cited", {"passed": "true", "evidence_turns": "[1]"})]
    )

"""Traces after faults: the records survive a fault, and a resume mends their traces. After each fault
every finished conversation has exactly one complete trace, the one its record names; nothing is
left IN_PROGRESS; a resumed evaluate attaches each verdict once."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import Counter

import pytest
from mlflow import MlflowClient

from chareval.io import read_records_jsonl
from chareval.schemas import Conversation, Evaluation
from chareval.store import trace_repair
from chareval.store.trace_repair import INTERRUPTED
from chareval.store.trace_writer import flush_shared
from conftest import DATA, start_cli
from fake_apis import FakeAPI, chat_completion

MOCK = ["models=mock", f"context_file={DATA / 'contexts.json'}", "turns=3"]


def traces(uri: str) -> list:
    flush_shared()  # another process writes the jobs' traces; nothing waits for it
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("chareval").experiment_id
    return list(client.search_traces(locations=[experiment], max_results=1000))


def assert_one_complete_trace_per_record(uri: str, path) -> list[Conversation]:
    records = [c for c in read_records_jsonl(path, Conversation) if c.error is None]
    found = traces(uri)
    conversation_traces = [t for t in found if t.info.tags.get("chareval.kind") == "conversation"]
    per_conversation = Counter(t.info.tags["conversation"] for t in conversation_traces)
    assert per_conversation == Counter(c.id for c in records)  # one each, and none without a record
    by_id = {t.info.trace_id: t for t in conversation_traces}
    for record in records:
        trace = by_id[record.trace_id]
        assert trace.info.state.value == "OK" and trace.info.tags["conversation"] == record.id
        assert len([s for s in trace.data.spans if s.span_type == "LLM"]) == len(record.messages)
    assert not [t for t in found if t.info.state.value == "IN_PROGRESS"]
    return records


def test_records_whose_traces_never_reached_the_store_are_traced_again_on_resume(make_job, workdir):
    """What a full store disk or a dead tracking server leaves: records naming traces it lacks."""
    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    run_dir = workdir / "run"
    outputs = make_job("conversations", *MOCK, "num_conversations=2", run_dir=run_dir).run()
    lost = read_records_jsonl(outputs["conversations"], Conversation)[0]
    flush_shared()
    client = MlflowClient(uri)
    client.delete_traces(client.get_experiment_by_name("chareval").experiment_id, trace_ids=[lost.trace_id])
    make_job("conversations", *MOCK, "num_conversations=3", run_dir=run_dir).run()
    records = assert_one_complete_trace_per_record(uri, outputs["conversations"])
    again = next(r for r in records if r.id == lost.id)
    assert again.trace_id != lost.trace_id and len(records) == 3
    (trace,) = [t for t in traces(uri) if t.info.trace_id == again.trace_id]
    assert all(s.attributes.get("chareval.rebuilt") for s in trace.data.spans if s.span_type == "LLM")
    assert again.model_copy(update={"trace_id": None}) == lost.model_copy(update={"trace_id": None})


@pytest.mark.parametrize("batch", [True, False], ids=["in-one-query", "a-store-without-the-batch-call"])
def test_a_resume_asks_the_store_for_its_traces_in_one_query_where_it_can(workdir, monkeypatch, batch):
    """A complete trace, one still in progress and one the store lacks: the last two are to mend."""
    import mlflow
    from mlflow.entities import TraceInfo, TraceLocation, TraceState
    from mlflow.exceptions import MlflowNotImplementedException
    from mlflow.tracing.client import TracingClient

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    store = TracingClient().store
    experiment = mlflow.create_experiment("repair")
    made = {}
    for name, state in (("complete", TraceState.OK), ("open", TraceState.IN_PROGRESS)):
        info = TraceInfo(
            trace_id=f"tr-{uuid.uuid4().hex}",
            trace_location=TraceLocation.from_experiment_id(experiment),
            request_time=int(time.time() * 1000),
            state=state,
        )
        made[name] = store.start_trace(info).trace_id
    lacking = f"tr-{uuid.uuid4().hex}"
    asked = Counter()
    for method in ("batch_get_trace_infos", "get_trace_info"):  # on the store MLflow keeps for this URI
        real = getattr(store, method)

        def counted(*args, _real=real, _method=method, **kwargs):
            asked[_method] += 1
            if _method == "batch_get_trace_infos" and not batch:
                raise MlflowNotImplementedException()
            return _real(*args, **kwargs)

        monkeypatch.setattr(store, method, counted)
    assert trace_repair.missing_or_unfinished([made["complete"], made["open"], lacking]) == {made["open"], lacking}
    assert asked == (Counter(batch_get_trace_infos=1) if batch else Counter(batch_get_trace_infos=1, get_trace_info=3))


def test_a_trace_whose_record_was_lost_is_not_kept_beside_the_new_one(make_job, workdir):
    """A full run-folder disk: the trace was written, the record was not; the resume redoes the item."""
    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    run_dir = workdir / "run"
    outputs = make_job("conversations", *MOCK, "num_conversations=3", run_dir=run_dir).run()
    lines = outputs["conversations"].read_text().splitlines(keepends=True)
    outputs["conversations"].write_text("".join(lines[:-1]))  # the last record never reached the disk
    make_job("conversations", *MOCK, "num_conversations=3", run_dir=run_dir).run()
    assert len(assert_one_complete_trace_per_record(uri, outputs["conversations"])) == 3


@pytest.mark.slow  # kill -9 of a subprocess
@pytest.mark.parametrize("stage", ["conversations", "evaluate"])
def test_kill_9_mid_stage_leaves_no_trace_in_progress_and_no_verdict_twice(tmp_path, stage):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    verdict = json.dumps({"score": 7, "rationale": "ok", "evidence_turns": [0], "slip_turn": None})

    # The last model call of the first run is held at the server, so that the kill finds one item
    # unfinished (its earlier calls answered and traced) and the others finished.
    hold_at = {"conversations": 8, "evaluate": 5}[stage]  # 3 x 3 turns, 2 x 3 judges
    held, release = threading.Event(), threading.Event()

    def reply(seen, n):
        if n == hold_at:
            held.set()
            release.wait(timeout=120)
        structured = "response_format" in seen.body or "tools" in seen.body
        return chat_completion(verdict if structured else f"reply {n}", seen.body["model"])

    env = {"MLFLOW_TRACKING_URI": uri}
    conversations = tmp_path / "made" / "conversations.jsonl"
    if stage == "evaluate":  # conversations traced into this store, for the verdicts to attach to
        made = start_cli(
            *MOCK, "stage=conversations", "num_conversations=2", f"hydra.run.dir={conversations.parent}", env=env
        )
        assert made.wait(timeout=300) == 0
    with FakeAPI(reply, delay_s=0.4) as api:
        args = [
            f"stage={stage}",
            "models=openai_compatible",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            "models.providers.openai_compatible.max_in_flight=1",
            f"hydra.run.dir={run_dir}",
            f"paths.outputs={tmp_path / 'outputs'}",
        ]
        if stage == "conversations":
            args += [f"context_file={DATA / 'contexts.json'}", "num_conversations=3", "turns=3"]
            out = run_dir / "conversations.jsonl"
        else:
            args += [
                f"input_file={conversations}",
                "evaluation.evaluators=[professionalism,boundary_holding,grounding]",
            ]
            out = run_dir / "evaluations.jsonl"
        first = start_cli(*args, env=env)
        deadline = time.monotonic() + 120

        def midway() -> bool:  # a record written, and the held item's earlier calls answered
            return held.is_set() and out.exists() and out.read_text().count("\n") >= 1

        def in_progress() -> bool:
            return any(t.info.state.value == "IN_PROGRESS" for t in traces(uri))

        while not midway() and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        release.set()
        # What the kill leaves: the trace writer, its stdin closed, writes what it was sent, the
        # spans of the held item's open trace too.
        while not in_progress() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert in_progress()
        second = start_cli(*args, env=env)
        assert second.wait(timeout=300) == 0
    found = traces(uri)
    assert not [t for t in found if t.info.state.value == "IN_PROGRESS"]
    interrupted = [t for t in found if t.info.tags.get("chareval.kind") == INTERRUPTED]
    assert interrupted and all(t.info.state.value == "ERROR" for t in interrupted)
    if stage == "conversations":
        assert len(assert_one_complete_trace_per_record(uri, out)) == 3
        return
    # Every verdict once on its conversation's trace.
    records = read_records_jsonl(out, Evaluation)
    assert len({r.id for r in records}) == 6
    verdicts = Counter(
        (t.info.trace_id, a.metadata["evaluation_id"])
        for t in found
        if t.info.tags.get("chareval.kind") == "conversation"
        for a in t.info.assessments
        if a.source.source_type == "LLM_JUDGE"
    )
    assert len(verdicts) == 6 and set(verdicts.values()) == {1}

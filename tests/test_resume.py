"""Nothing lost on a crash: a rerun in the same run folder keeps finished work and does the rest."""

from __future__ import annotations

import pytest

from chareval.io import read_records_json, read_records_jsonl, write_records_json
from chareval.schemas import Context, Conversation
from conftest import DATA

pytestmark = pytest.mark.slow  # the embedded model

OVERRIDES = [
    f"context_file={DATA / 'contexts.json'}",
    "turns=1",
    "models.generation.assistant.max_tokens=8",
    "cache=false",
]


def test_rerun_keeps_finished_conversations_and_retries_errors(make_job, workdir):
    run_dir = workdir / "run"
    make_job("conversations", *OVERRIDES, "num_conversations=2", run_dir=run_dir).run()
    out = run_dir / "conversations.jsonl"
    first, second = out.read_text().splitlines()
    # Simulate: conversation 2 failed, then the process died while appending a third.
    failed = Conversation.model_validate_json(second).model_copy(update={"error": "turn 0: overloaded"})
    out.write_text(first + "\n" + failed.model_dump_json() + "\n" + '{"schema_version": 1, "id": "conv-0')

    job = make_job("conversations", *OVERRIDES, "num_conversations=3", run_dir=run_dir)
    job.run()
    records = read_records_jsonl(out, Conversation)
    assert records[0] == Conversation.model_validate_json(first)  # kept as it was
    assert job.client.meter.total().calls == 2  # conv-002 retried, conv-003 new, conv-001 not redone
    latest = {r.id: r for r in records}
    assert sorted(latest) == ["conv-001", "conv-002", "conv-003"]
    assert latest["conv-002"].error is None


def test_rerun_of_contexts_continues_where_it_stopped(make_job, workdir):
    run_dir = workdir / "ctx"
    make_job("contexts", "num_contexts=1", run_dir=run_dir).run()
    # Mark the finished context: a rerun that regenerated it (from the model or the cache) would lose the mark.
    (kept,) = read_records_json(run_dir / "contexts.json", Context)
    write_records_json(run_dir / "contexts.json", [kept.model_copy(update={"title": "KEPT FROM THE FIRST RUN"})])
    job = make_job("contexts", "num_contexts=2", run_dir=run_dir)
    job.run()
    first, second = read_records_json(run_dir / "contexts.json", Context)
    assert (first.id, first.title, second.id) == ("ctx-001", "KEPT FROM THE FIRST RUN", "ctx-002")
    assert second.title != first.title


def test_a_finished_config_rerun_is_served_from_the_cache(make_job, workdir):
    overrides = [
        f"context_file={DATA / 'contexts.json'}",
        "turns=2",
        "num_conversations=1",
        "models.generation.assistant.max_tokens=8",
        "models.generation.user.max_tokens=8",
    ]
    make_job("conversations", *overrides, run_dir=workdir / "one").run()
    again = make_job("conversations", *overrides, run_dir=workdir / "two")
    again.run()
    usage = again.client.meter.total()
    assert usage.calls == 0 and usage.cached_calls == 2
    # the same records, except that each run traced its own conversation (its MLflow trace id)
    (first,) = read_records_jsonl(workdir / "one" / "conversations.jsonl", Conversation)
    (second,) = read_records_jsonl(workdir / "two" / "conversations.jsonl", Conversation)
    assert first.trace_id and second.trace_id and first.trace_id != second.trace_id
    assert first.model_copy(update={"trace_id": None}) == second.model_copy(update={"trace_id": None})


def test_a_run_folder_recorded_before_themes_had_names_still_resumes(make_job, workdir):
    import json

    from chareval.fingerprint import FILE, check_or_record

    job = make_job("conversations", "models=mock", f"context_file={DATA / 'contexts.json'}")
    folder = workdir / "old"
    check_or_record(folder, job.settings)  # records the fingerprint, as a first run does
    recorded = json.loads((folder / FILE).read_text())
    assert "theme.prompt" in recorded and "theme.name" not in recorded  # as an older release wrote it
    check_or_record(folder, job.settings)  # no "settings changed" stop

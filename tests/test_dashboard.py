"""The dashboard's pages with Streamlit's AppTest, over a real store made by the real stages
(tests/dashboard_store.py): rows, transcripts in order, marks, filters, labels that judge_check takes."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from streamlit.testing.v1 import AppTest

from chareval import PROJECT_ROOT
from chareval.io import read_records_json, read_records_jsonl
from chareval.schemas import Context, Conversation, Evaluation, JudgeCase
from conftest import run_cli
from dashboard.components import escape
from dashboard_store import HOSTILE, HOSTILE_RATIONALE, all_runs

pytestmark = pytest.mark.slow  # the store is built with the embedded model

APP = str(PROJECT_ROOT / "dashboard" / "app.py")


@pytest.fixture
def app(dashboard_store, monkeypatch):
    """Open a page of the dashboard on the store, with query parameters as a shared link carries them."""
    for key, value in dashboard_store.env().items():
        monkeypatch.setenv(key, value)

    def open_page(page: str, **params: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=180)
        at.query_params.update(params)
        at.run()
        if page != "runs":
            at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return open_page


def artifact_records(store, run_id: str, path: str, model):
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=store.uri)
    return read_records_jsonl(local, model)


def keyed(at: AppTest, name: str):
    """A selectable table, by its name (its key is the name and a digest of its rows)."""
    (found,) = [d for d in at.dataframe if d.key and d.key.startswith(f"{name}.")]
    return found


def table(at: AppTest, name: str):
    return keyed(at, name).value


def frame(at: AppTest, column: str):
    """The one table with this column (tables that cannot be selected carry no key)."""
    (found,) = [d.value for d in at.dataframe if column in d.value.columns]
    return found


def select_row(at: AppTest, name: str, row: int) -> AppTest:
    at.session_state[keyed(at, name).key] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    return at.run()


# --- Runs -----------------------------------------------------------------------------------


def test_runs_lists_every_run_newest_first_with_key_metrics(app, dashboard_store):
    at = app("runs")
    rows = table(at, "runs.table")
    expected = [r for r in all_runs(dashboard_store.uri)]
    assert list(rows["run id"]) == [r.info.run_id for r in expected]
    hosted = rows[rows["run id"] == dashboard_store.hosted_evaluate].iloc[0]
    metrics = next(r for r in expected if r.info.run_id == dashboard_store.hosted_evaluate).data.metrics
    assert hosted["boundary_holding mean"] == pytest.approx(metrics["judge.boundary_holding.mean"])
    assert hosted["judgments"] == metrics["evaluate.n_records"] and hosted["errors"] == metrics["evaluate.n_errors"]
    assert hosted["MLflow"].endswith(f"/runs/{dashboard_store.hosted_evaluate}")
    assert set(rows["stage"]) >= {"pipeline", "sweep", "contexts", "conversations", "prepare", "finetune", "evaluate"}


def test_runs_filters_narrow_the_list(app, dashboard_store):
    runs = all_runs(dashboard_store.uri)
    at = app("runs")
    at.selectbox(key="runs.stage").set_value("evaluate").run()
    assert set(table(at, "runs.table")["run id"]) == {
        r.info.run_id for r in runs if r.data.tags.get("chareval.stage") == "evaluate"
    }
    at.selectbox(key="runs.turns").set_value("2").run()
    two = {
        r.info.run_id
        for r in runs
        if r.data.tags.get("chareval.stage") == "evaluate" and r.data.params.get("turns") == "2"
    }
    assert set(table(at, "runs.table")["run id"]) == two and len(two) == 1
    at.selectbox(key="runs.stage").set_value(None)
    at.selectbox(key="runs.turns").set_value(None).run()
    at.toggle(key="runs.top").set_value(True).run()
    assert set(table(at, "runs.table")["run id"]) == {
        r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags
    }
    at.toggle(key="runs.top").set_value(False).run()
    at.selectbox(key="runs.turns").set_value("1").run()
    offered = at.selectbox(key="runs.turns").options  # the choices are the values of the runs found
    at.selectbox(key="runs.stage").set_value("contexts").run()  # only the pipeline made contexts, with turns=3
    assert offered == ["1"]
    assert not [d for d in at.dataframe if d.key and d.key.startswith("runs.table.")]
    assert "No run matches" in at.info[0].value


def test_picking_a_run_links_it_to_the_other_pages(app, dashboard_store):
    at = app("runs")
    rows = table(at, "runs.table")
    row = list(rows["run id"]).index(dashboard_store.pipeline)
    select_row(at, "runs.table", row)
    links = at.get("page_link")
    assert {link.value for link in links} == {"Conversations", "Evaluations", "Compare", "Review"}
    assert all(link.proto.query_string == f"run={dashboard_store.pipeline}" for link in links)
    assert at.query_params["run"] == dashboard_store.pipeline


# --- Conversations ----------------------------------------------------------------------------


def test_transcript_in_order_with_context_and_verdicts_marked(app, dashboard_store):
    store = dashboard_store
    at = app("conversations", run=store.pipeline, judged=store.hosted_evaluate, conv="conv-001")
    conversations = artifact_records(store, store.conversations, "conversations.jsonl", Conversation)
    assert list(table(at, "conversations.table")["conversation"]) == [c.id for c in conversations]
    conversation = conversations[0]
    chat = at.chat_message
    assert chat[0].text[0].value == conversation.opening_prompt
    assert [(m.name, m.text[-1].value) for m in chat[1:]] == [(m.role, m.content) for m in conversation.messages]
    assert [m.caption[0].value for m in chat[1:]] == [
        escape(f"turn {m.turn} · {m.role} · {m.model}") for m in conversation.messages
    ]
    # judge-b put the slip at turn 2 and cited it; judge-a cited turn 0 as evidence of a pass.
    by_turn = {m.turn: chat[i + 1] for i, m in enumerate(conversation.messages)}
    assert [e.value for e in by_turn[2].error] == [
        escape("slip here: boundary_holding (openai_compatible/judge-b, sample 0) - first turn where it broke")
    ]
    assert escape("fail 3/10") in by_turn[2].warning[0].value and escape("pass 8/10") in by_turn[0].success[0].value
    assert not by_turn[1].error and not by_turn[1].success
    context = read_records_json(store.root / "runs" / "pipeline" / "contexts.json", Context)[0]
    texts = [t.value for t in at.text]
    assert context.title in texts and context.scenario in texts and context.documents[0].content in texts
    boundaries = next(t for t in texts if t.startswith("Boundaries:"))  # what the judges were told, beside the verdicts
    assert all(b in boundaries for b in conversation.characters.assistant_boundaries)
    judgments = frame(at, "answered by")
    assert sorted(judgments["judge"]) == ["openai_compatible/judge-a", "openai_compatible/judge-b"]


def test_the_verdicts_of_another_evaluate_run_can_be_chosen(app, dashboard_store):
    store = dashboard_store
    at = app("conversations", run=store.conversations, conv="conv-002")
    picker = next(s for s in at.selectbox if s.label == "Verdicts of")
    assert len(picker.options) == 2  # the pipeline's own judge and the hosted judges
    local = artifact_records(store, store.local_evaluate, "evaluations.jsonl", Evaluation)
    picker.set_value(store.local_evaluate).run()
    judgments = frame(at, "answered by")
    assert list(judgments["judge"]) == [e.judge_model for e in local if e.conversation_id == "conv-002"]


# --- Evaluations ------------------------------------------------------------------------------


def test_evaluations_show_statistics_agreement_disagreements_and_errors(app, dashboard_store):
    store = dashboard_store
    at = app("evaluations", run=store.hosted_evaluate)
    summary = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=store.hosted_evaluate, artifact_path="summary.json", tracking_uri=store.uri
            )
        ).read_text()
    )
    per_evaluator, agreement = frame(at, "sample_spread"), frame(at, "kappa")
    entry = summary["evaluators"]["boundary_holding"]
    assert per_evaluator.iloc[0]["n"] == entry["n"] == 3 and per_evaluator.iloc[0]["errors"] == entry["n_errors"] == 1
    assert per_evaluator.iloc[0]["pass_rate"] == pytest.approx(entry["pass_rate"])
    assert agreement.iloc[0]["n"] == 1 and agreement.iloc[0]["exact_agreement"] == 0
    assert list(table(at, "evaluations.disagreements")["conversation"]) == ["conv-001"]
    errors = table(at, "evaluations.errors")
    assert list(errors["conversation"]) == ["conv-002"] and list(errors["judge"]) == ["openai_compatible/judge-b"]
    assert at.main.code[-1].value == "I would rather not answer in JSON."
    assert at.get("vega_lite_chart")  # the CI, pass-rate and score-distribution charts


def test_a_disagreement_opens_its_transcript(app, dashboard_store):
    at = app("evaluations", run=dashboard_store.hosted_evaluate)
    select_row(at, "evaluations.disagreements", 0)
    assert at.title[0].value == "Conversations"
    assert at.query_params["conv"] == "conv-001" and at.query_params["judged"] == dashboard_store.hosted_evaluate


# --- Compare ----------------------------------------------------------------------------------


def test_compare_a_sweep_plots_judge_metrics_against_its_choices(app, dashboard_store):
    at = app("compare", runs=dashboard_store.sweep)
    rows = frame(at, "pass_low")
    evaluates = [
        r
        for r in all_runs(dashboard_store.uri)
        if r.data.tags.get("chareval.sweep") == dashboard_store.sweep and r.data.tags["chareval.stage"] == "evaluate"
    ]
    assert sorted(rows["turns"]) == ["1", "2"] and set(rows["evaluator"]) == {"professionalism"}
    for r in evaluates:
        row = rows[rows["run"] == r.info.run_id].iloc[0]
        assert row["mean"] == pytest.approx(r.data.metrics["judge.professionalism.mean"])
        assert row["pass_low"] <= row["pass_rate"] <= row["pass_high"]
    assert at.selectbox[0].value == "turns"  # the choice that varies is plotted by default
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["facet"]["column"]["field"] == "evaluator"


def test_compare_two_runs_side_by_side(app, dashboard_store):
    store = dashboard_store
    at = app("compare", a=store.sweep_jobs[0], b=store.sweep_jobs[1])
    deltas = frame(at, "delta mean")
    assert list(deltas["evaluator"]) == ["professionalism"]
    row = deltas.iloc[0]
    if row["A mean"] is not None and row["B mean"] is not None:
        assert row["delta mean"] == pytest.approx(row["B mean"] - row["A mean"])
    contents = [m.text[-1].value for m in at.chat_message]
    conversations = []
    for job in store.sweep_jobs:
        conversation_run = next(
            r
            for r in all_runs(store.uri)
            if r.data.tags.get("mlflow.parentRunId") == job and r.data.tags["chareval.stage"] == "conversations"
        )
        conversations += artifact_records(store, conversation_run.info.run_id, "conversations.jsonl", Conversation)
    expected = [text for c in conversations for text in [c.opening_prompt, *(m.content for m in c.messages)]]
    assert contents == expected and len(expected) == 2 + 1 + 2


# --- Fine-tuned models ------------------------------------------------------------------------


def test_models_lists_the_registry_with_the_loss_curve(app, dashboard_store):
    at = app("models")
    (record,) = [json.loads(line) for line in dashboard_store.registry.read_text().splitlines()]
    rows = table(at, "models.table")
    assert list(rows["model"]) == [record["model"]] and rows.iloc[0]["status"] == "completed"
    history = mlflow.MlflowClient(dashboard_store.uri).get_metric_history(dashboard_store.finetune, "train.loss")
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["encoding"]["y"]["field"] == "loss" and len(history) == 2
    assert "has not been through the closed loop" in at.info[0].value


# --- Review -----------------------------------------------------------------------------------


def test_review_writes_labels_that_judge_check_measures_a_judge_against(app, dashboard_store, tmp_path):
    store = dashboard_store
    labels = tmp_path / "labels.jsonl"
    at = app("review", run=store.pipeline, labels=str(labels), conv="conv-002")
    assert "0 conversations labelled" in at.caption[0].value
    assert "No judge check on this labels file yet" in at.info[-1].value
    (radio,) = [r for r in at.radio if r.label == "boundary_holding"]
    radio.set_value("fail")
    at.text_area[0].input("slips at turn 2")
    next(b for b in at.button if b.label == "Save label").click().run()
    (case,) = read_records_jsonl(labels, JudgeCase)
    assert case.expected == {"boundary_holding": False} and case.note == "slips at turn 2"
    assert case.id == case.conversation.id == f"{store.conversations[:8]}-conv-002"
    assert "1 conversations labelled" in at.caption[0].value and "saved" in at.success[0].value
    # ... and on the conversation's MLflow trace, as HUMAN feedback beside the judges' verdicts
    assert "and on its MLflow trace" in at.success[0].value
    mlflow_client = mlflow.MlflowClient(tracking_uri=store.uri)
    (human,) = [
        a
        for a in mlflow_client.get_trace(case.conversation.trace_id).info.assessments
        if a.source.source_type == "HUMAN"
    ]
    assert (human.name, human.feedback.value, human.rationale) == ("boundary_holding", False, "slips at turn 2")

    result = run_cli(
        "stage=judge_check",
        f"judge_check.dataset={labels}",
        "evaluation.evaluators=[boundary_holding]",
        f"paths.outputs={store.outputs}",
        env=store.env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    at.sidebar.button[0].click().run()  # Refresh: read the new judge_check run
    accuracy = frame(at, "accuracy")
    assert list(accuracy["evaluator"]) == ["boundary_holding"] and accuracy.iloc[0]["n"] == 1
    assert not any("labels changed since" in c.value for c in at.caption)


# --- Untrusted text -----------------------------------------------------------------------------


def test_model_output_is_shown_literally_never_as_markup(app, dashboard_store):
    at = app("conversations", run=dashboard_store.hostile_evaluate)
    (conversation,) = read_records_jsonl(HOSTILE, Conversation)
    texts = [t.value for t in at.text]
    for message in conversation.messages:
        assert message.content in texts  # e.g. "![x](http://...) <script>...": verbatim, as text
    assert conversation.messages[0].thinking in texts and HOSTILE_RATIONALE in texts
    rendered_as_markdown = [
        e.value
        for kind in ("markdown", "caption", "error", "warning", "success", "info", "subheader", "title")
        for e in at.get(kind)
    ] + [e.label for e in at.get("expander")]
    for value in rendered_as_markdown:
        assert "<script" not in value and "![" not in value and "<img" not in value and "<iframe" not in value, value
    assert not any(e.proto.allow_html for kind in ("markdown", "caption") for e in at.get(kind))


# --- Empty states -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "page,command",
    [
        ("runs", "make run"),
        ("conversations", "python src/run.py stage=conversations"),
        ("evaluations", "python src/run.py stage=evaluate"),
        ("compare", "python src/run.py -m"),
        ("models", "python src/run.py stage=finetune"),
        ("review", "make run"),
    ],
)
def test_each_page_says_which_command_fills_it_on_an_empty_store(page, command, tmp_path, monkeypatch):
    from chareval.store.runs import use_store

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    use_store(uri, "chareval")  # an empty store, as after `make clean` and one aborted run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CHAREVAL_DASHBOARD_ARGS", f"paths.outputs={tmp_path / 'outputs'}")
    at = AppTest.from_file(APP, default_timeout=60).run()
    if page != "runs":
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception
    assert any(command in c.value for c in at.code), [c.value for c in at.code]


def test_no_store_yet_says_make_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}")
    monkeypatch.setenv("CHAREVAL_DASHBOARD_ARGS", "")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert "No MLflow store yet" in at.info[0].value and any("make run" in c.value for c in at.code)
    assert not (tmp_path / "none").exists()  # reading never creates a store


@pytest.mark.parametrize("damage", ["not a database", "half-created"])
def test_a_damaged_store_file_is_a_banner_with_the_fix_not_a_traceback(tmp_path, monkeypatch, damage):
    import sqlite3

    db = tmp_path / "mlflow.db"
    if damage == "not a database":
        db.write_bytes(b"not a database" * 100)
    else:  # its tables were being made when the disk filled
        connection = sqlite3.connect(db)
        connection.execute("CREATE TABLE experiments (experiment_id INTEGER)")
        connection.commit()
        connection.close()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("CHAREVAL_DASHBOARD_ARGS", "")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    (banner,) = at.error
    assert escape(f"mv {db} {db}.broken") in banner.value and escape(f"{db} is ") in banner.value

"""The dashboard's reshaping of records and its MLflow filters, checked on hand-made records (the
pages over a real store are in test_dashboard.py)."""

from __future__ import annotations

from datetime import date

import pytest

from chareval.errors import InputError
from chareval.evaluators.stats import wilson95
from chareval.schemas import Conversation, Evaluation, Message, Usage
from dashboard import derive, settings
from dashboard.components import escape
from dashboard.data import RunFilter, quote


def judgment(conv, evaluator, judge, sample, passed, score, evidence=(), slip=None, error=None) -> Evaluation:
    return Evaluation(
        id=f"{conv}|{evaluator}|{judge}|{sample}",
        conversation_id=conv,
        context_id="ctx",
        evaluator=evaluator,
        judge_model=judge,
        sample=sample,
        seed=0,
        score=None if error else score,
        passed=None if error else passed,
        evidence_turns=list(evidence),
        details={} if slip is None else {"slip_turn": slip},
        error=error,
    )


def conversation(conv_id: str, context_id: str, n: int = 2) -> Conversation:
    return Conversation(
        id=conv_id,
        context_id=context_id,
        assistant_persona="a",
        user_persona="u",
        assistant_model="m",
        user_model="m",
        turns=n,
        seed=0,
        assistant_system_prompt="s",
        user_system_prompt="s",
        opening_prompt="hi",
        usage=Usage(),
        messages=[
            Message(role="assistant" if t % 2 == 0 else "user", content=f"{conv_id} {t}", turn=t, model="m")
            for t in range(n)
        ],
    )


def test_marks_put_slips_and_evidence_on_their_turns():
    records = [
        judgment("c1", "boundary_holding", "j1", 0, False, 3, evidence=[2], slip=2),
        judgment("c1", "professionalism", "j1", 0, True, 9, evidence=[0, 2]),
        judgment("c1", "grounding", "j1", 0, None, None, evidence=[], error="invalid"),
    ]
    marks = derive.marks(records)
    assert sorted(marks) == [0, 2]
    assert [(m.kind, m.evaluator) for m in marks[2]] == [
        ("slip", "boundary_holding"),
        ("evidence", "boundary_holding"),
        ("evidence", "professionalism"),
    ]
    assert "fail 3/10" in marks[2][1].text() and "pass 9/10" in marks[0][0].text()


def test_disagreements_are_verdicts_that_differ_across_judges_or_samples():
    records = [
        judgment("c1", "e", "j1", 0, True, 8),
        judgment("c1", "e", "j2", 0, False, 3),  # judges differ
        judgment("c2", "e", "j1", 0, True, 8),
        judgment("c2", "e", "j1", 1, True, 6),  # same verdict
        judgment("c3", "e", "j1", 0, False, 2),
        judgment("c3", "e", "j1", 1, True, 7),  # samples differ
        judgment("c4", "e", "j1", 0, True, 8),
        judgment("c4", "e", "j2", 0, None, None, error="x"),  # an error is no verdict
    ]
    rows = derive.disagreements(records)
    assert [(r["conversation"], r["passes"], r["fails"]) for r in rows] == [("c1", 1, 1), ("c3", 1, 1)]
    assert rows[1]["verdicts"] == "j1 #0: fail 2; j1 #1: pass 7"


def test_conversation_rows_average_valid_scores_and_name_failed_evaluators():
    convs = [
        conversation("c1", "ctx-1"),
        conversation("c2", "ctx-2").model_copy(update={"error": "turn 1 (user): boom"}),
    ]
    records = [
        judgment("c1", "a", "j", 0, True, 8),
        judgment("c1", "b", "j", 0, False, 4),
        judgment("c1", "c", "j", 0, None, None, error="bad"),
    ]
    rows = derive.conversation_rows(convs, records, {})
    assert rows[0]["mean score"] == 6 and rows[0]["failed evaluators"] == "b" and rows[0]["judgment errors"] == 1
    assert rows[1]["error"] == "turn 1 (user): boom" and rows[1]["mean score"] is None


def test_two_runs_pair_by_context_and_occurrence():
    a = [conversation("a1", "x"), conversation("a2", "y"), conversation("a3", "x")]
    b = [conversation("b1", "y"), conversation("b2", "x"), conversation("b3", "z")]
    pairs = [(ctx, ca and ca.id, cb and cb.id) for ctx, ca, cb in derive.pair_conversations(a, b)]
    assert pairs == [("x", "a1", "b2"), ("y", "a2", "b1"), ("x", "a3", None), ("z", None, "b3")]


def test_delta_rows_are_b_minus_a():
    a = {"evaluators": {"e": {"mean": 6.0, "pass_rate": 0.5}}}
    b = {"evaluators": {"e": {"mean": 7.5, "pass_rate": 0.75}}}
    (row,) = derive.delta_rows(a, b)
    assert row["delta mean"] == 1.5 and row["delta pass_rate"] == 0.25 and row["A mean"] == 6.0


def test_wilson_interval_matches_hand_computed_values():
    low, high = wilson95(0.5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson95(1.0, 4)[1] == 1.0 and wilson95(1.0, 4)[0] == pytest.approx(0.5101, abs=1e-4)
    assert wilson95(None, 0) == (None, None)


def test_run_filter_is_an_mlflow_expression():
    flt = RunFilter(
        stage="evaluate",
        status="FAILED",
        persona="jasmine",
        turns="3",
        since=date(2026, 1, 2),
        until=date(2026, 1, 2),
        top_level=True,
    )
    expression = flt.expression()
    assert "tags.`chareval.stage` = 'evaluate'" in expression and "attributes.status = 'FAILED'" in expression
    assert "tags.`choice.persona` = 'jasmine'" in expression and "params.turns = '3'" in expression
    assert "tags.`mlflow.parentRunId` IS NULL" in expression and expression.count(" AND ") == 6
    assert RunFilter(stage="sweep").expression() == "tags.`chareval.kind` = 'sweep'"
    assert RunFilter().expression() == ""
    with pytest.raises(InputError, match="cannot contain a quote"):
        quote("o'brien")


def test_escape_makes_every_markdown_character_literal():
    import string

    text = "![x](http://e.x/y.png) <b>*a*_b_ `c` #h [l](javascript:1) | ~ $x$ \\"
    escaped, i, plain = escape(text), 0, ""
    while i < len(escaped):  # every punctuation character comes escaped, and nothing else does
        if escaped[i] == "\\":
            assert escaped[i + 1] in string.punctuation
            plain, i = plain + escaped[i + 1], i + 2
        else:
            assert escaped[i] not in string.punctuation
            plain, i = plain + escaped[i], i + 1
    assert plain == text


def test_dashboard_overrides_come_from_its_own_command_line_or_the_environment(monkeypatch, tmp_path):
    app = "dashboard/app.py"
    monkeypatch.delenv(settings.ARGS_ENV, raising=False)
    assert settings.overrides([app, "tracking.uri=x"], app) == ["tracking.uri=x"]
    monkeypatch.setenv(settings.ARGS_ENV, "paths.outputs=/data 'tracking.uri=sqlite:////a b/m.db'")
    assert settings.overrides(["pytest", "-k", "x"], app) == ["paths.outputs=/data", "tracking.uri=sqlite:////a b/m.db"]
    assert settings.overrides([app, "paths.outputs=/mine"], app)[-1] == "paths.outputs=/mine"  # the command line wins
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    loaded = settings.load([f"paths.outputs={tmp_path}", "tracking.uri=http://mlflow.internal:5000"])
    assert loaded.registry == tmp_path / "registry" / "finetuned_models.jsonl"
    assert loaded.tracking_uri == loaded.mlflow_ui == "http://mlflow.internal:5000"
    from chareval.errors import ConfigError

    with pytest.raises(ConfigError, match="do not compose"):
        settings.load(["tracking=nope"])

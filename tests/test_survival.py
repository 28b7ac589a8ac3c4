"""Turns-to-breach: the Kaplan-Meier estimate against a hand-computed example with censoring, pass^k,
the times read from verdicts, and evaluate's breach_curve.json, picture and metrics."""

from __future__ import annotations

import json
import math

import mlflow
import pytest
from mlflow import MlflowClient

from chareval.evaluators import survival
from chareval.evaluators.survival import Outcome, breach_curve, breach_times, kaplan_meier, pass_hat_k
from chareval.io import read_records_jsonl, write_jsonl_atomic
from chareval.schemas import Conversation, JobOutcome, Message
from chareval.sweep_compare import breach_picture, survival_rows, table
from conftest import DATA

Z = 1.959963984540054


def test_kaplan_meier_matches_the_hand_computed_estimate_with_censoring():
    # Five conversations: breaches at turns 1, 2 and 3; one held to turn 2, one to turn 3 (censored).
    result = kaplan_meier([1, 2, 2, 3, 3], [True, True, False, True, False], horizon=4)
    rows = {r["turn"]: r for r in result["survival"]}
    # S(1) = 4/5; S(2) = 4/5 * 3/4 (4 at risk, 1 breach); S(3) = 0.6 * 1/2 (2 at risk); flat after.
    assert [round(rows[t]["survival"], 12) for t in (1, 2, 3, 4)] == [0.8, 0.6, 0.3, 0.3]
    assert [rows[t]["at_risk"] for t in (1, 2, 3, 4)] == [5, 4, 2, 0]
    # Greenwood on the log(-log) scale: sigma = sqrt(sum d / (n (n - d))) / |log S|, bounds S^exp(±z sigma).
    for t, terms in ((1, [(1, 5)]), (2, [(1, 5), (1, 4)]), (3, [(1, 5), (1, 4), (1, 2)])):
        s = rows[t]["survival"]
        sigma = math.sqrt(sum(d / (n * (n - d)) for d, n in terms)) / abs(math.log(s))
        assert rows[t]["ci_low"] == pytest.approx(s ** math.exp(Z * sigma), rel=1e-6)
        assert rows[t]["ci_high"] == pytest.approx(s ** math.exp(-Z * sigma), rel=1e-6)
    assert result["median_turn"] == 3  # the first turn where the estimate is at or below one half


def test_a_boundary_that_always_holds_has_no_median():
    result = kaplan_meier([3, 3], [False, False], horizon=3)
    assert [r["survival"] for r in result["survival"]] == [1.0, 1.0, 1.0] and result["median_turn"] is None


def test_pass_hat_k_is_the_chance_that_k_conversations_of_a_context_all_hold():
    # Context a: 2 of 3 held; b: 3 of 3. pass^1 = (2/3 + 1)/2, pass^2 = (C(2,2)/C(3,2) + 1)/2, pass^3 = (0 + 1)/2.
    result = pass_hat_k({"a": [True, True, False], "b": [True, True, True]})
    assert result == pytest.approx({1: 5 / 6, 2: 2 / 3, 3: 0.5})
    assert pass_hat_k({"a": [True, False], "b": [True, True, True]}).keys() == {1, 2}  # k up to the fewest


def conversation(cid: str, replies: int, context: str = "ctx-001", strategy: str = "persona") -> Conversation:
    template = read_records_jsonl(DATA / "conversations.jsonl", Conversation)[0]
    messages = [
        Message(role="assistant" if t % 2 == 0 else "user", content=f"{cid} {t}", turn=t, model="mock/m")
        for t in range(2 * replies - 1)
    ]
    return template.model_copy(
        update={
            "id": cid,
            "messages": messages,
            "turns": len(messages),
            "context_id": context,
            "context_sha256": None,
            "user_strategy": strategy,
        }
    )


def test_breach_times_come_from_the_verdicts_slip_turns_and_lengths():
    conversations = [conversation("held", 3), conversation("slip", 3), conversation("unnamed", 2), conversation("x", 2)]
    outcomes = {
        "held": Outcome(True, None),
        "slip": Outcome(False, 4),  # message turn 4 = the third assistant reply
        "unnamed": Outcome(False, None),  # failed with no slip turn named: counted at its last reply
    }  # "x" has no verdict: left out
    times = {t.conversation_id: t for t in breach_times(conversations, outcomes)}
    assert set(times) == {"held", "slip", "unnamed"}
    assert (times["held"].turns, times["held"].broke) == (3, False)
    assert (times["slip"].turns, times["slip"].broke) == (3, True)
    assert (times["unnamed"].turns, times["unnamed"].broke, times["unnamed"].slip_named) == (2, True, False)


def test_the_curve_is_drawn_per_persona_user_persona_and_strategy():
    conversations = [conversation("a", 2), conversation("b", 2, strategy="adaptive")]
    result = breach_curve(breach_times(conversations, {"a": Outcome(True, None), "b": Outcome(False, 0)}))
    assert result["all"]["n"] == 2
    assert sorted(g.rsplit(" × ", 1)[1] for g in result["groups"]) == ["adaptive", "persona"]
    adaptive = next(g for name, g in result["groups"].items() if name.endswith("adaptive"))
    assert (adaptive["survival"][0]["survival"], adaptive["survival"][0]["at_risk"]) == (0.0, 1)  # broke at once
    persona = next(g for name, g in result["groups"].items() if name.endswith("persona"))
    assert [r["survival"] for r in persona["survival"]] == [1.0, 1.0] and persona["censored"] == 1


VERDICTS = [
    {"score": 9, "rationale": "held", "evidence_turns": [0], "slip_turn": None},
    {"score": 2, "rationale": "slipped", "evidence_turns": [2], "slip_turn": 2},
    {"score": 2, "rationale": "slipped", "evidence_turns": [0], "slip_turn": 0},
]


def judged(make_job, workdir, *overrides: str, name: str = "evaluate", count: int = 3) -> dict:
    """evaluate on the first `count` of three conversations, the mock judge scripted (VERDICTS, in
    order): one holds, one slips at its second reply, one at its first."""
    cs = [conversation("c1", 3, "ctx-001"), conversation("c2", 3, "ctx-001"), conversation("c3", 3, "ctx-002")]
    source = workdir / f"conversations-{count}.jsonl"
    write_jsonl_atomic(source, [c.model_dump(mode="json") for c in cs[:count]])
    script = "+models.providers.mock.scripted.judge=[" + ",".join(f"'{json.dumps(v)}'" for v in VERDICTS) + "]"
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    job = make_job(
        "evaluate",
        "models=mock",
        "models.providers.mock.max_in_flight=1",  # one judgment at a time: the script goes in order
        f"input_file={source}",
        "evaluation.evaluators=[boundary_holding]",
        script,
        *overrides,
        run_dir=workdir / "outputs" / name,
    )
    return job.run() | {"job": job}


def test_evaluate_writes_the_breach_curve_its_picture_and_metrics(make_job, workdir):
    outputs = judged(make_job, workdir)
    job = outputs["job"]
    result = json.loads(outputs["breach_curve"].read_text())
    pooled = result["all"]
    # Judged in id order: c1 held (censored at 3), c2 broke at reply 2, c3 at reply 1.
    assert [r["survival"] for r in pooled["survival"]] == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert (pooled["breaches"], pooled["censored"]) == (2, 1)
    assert pooled["pass_hat_k"] == pytest.approx({"1": 0.25})  # ctx-001: 1 of 2 held; ctx-002: 0 of 1
    assert outputs["breach_curve_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = MlflowClient().get_run(job.log.top_run_id)
    assert run.data.metrics["breach.survival.t1"] == pytest.approx(2 / 3)
    assert run.data.metrics["pass_hat_k.1"] == pytest.approx(0.25)
    history = MlflowClient().get_metric_history(run.info.run_id, "breach.survival")
    assert [(h.step, round(h.value, 6)) for h in sorted(history, key=lambda h: h.step)] == [
        (1, round(2 / 3, 6)),
        (2, round(1 / 3, 6)),
        (3, round(1 / 3, 6)),
    ]
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"breach_curve.json", "breach_curve.png"} <= artifacts


def test_a_rerun_with_the_same_verdicts_copies_the_curve_and_one_with_others_draws_its_own(
    make_job, workdir, monkeypatch
):
    first = judged(make_job, workdir)
    drawn = [first["breach_curve"].read_bytes(), first["breach_curve_png"].read_bytes()]

    def not_again(*args, **kwargs):
        raise AssertionError("the curve was computed again for the same verdicts")

    with monkeypatch.context() as m:
        m.setattr(survival, "kaplan_meier", not_again)
        m.setattr(survival, "draw", not_again)
        again = judged(make_job, workdir, name="again")
    assert [again["breach_curve"].read_bytes(), again["breach_curve_png"].read_bytes()] == drawn
    runs = [MlflowClient().get_run(o["job"].log.top_run_id).data.metrics for o in (first, again)]
    breach = [{k: v for k, v in m.items() if k.startswith(("breach.", "pass_hat_k."))} for m in runs]
    assert breach[1] == breach[0]
    fits = []
    monkeypatch.setattr(survival, "kaplan_meier", lambda *a, **k: fits.append(a) or kaplan_meier(*a, **k))
    fewer = judged(make_job, workdir, name="fewer", count=2)  # c1 held, c2 broke at reply 2
    assert fits and json.loads(fewer["breach_curve"].read_text())["all"]["n"] == 2


def test_a_corrupt_memo_is_drawn_again_and_with_the_cache_off_there_is_none(make_job, workdir, caplog):
    first = judged(make_job, workdir)
    (memo,) = (workdir / "outputs" / "cache" / "breach").glob("*.json")
    entry = json.loads(memo.read_text())
    memo.write_text(json.dumps(entry | {"curve": entry["curve"].replace('"n": 3', '"n": 30')}))  # a hand edit
    again = judged(make_job, workdir, name="again")
    assert f"ignoring a corrupt breach-curve memo {memo}" in caplog.text
    assert again["breach_curve"].read_bytes() == first["breach_curve"].read_bytes()
    assert json.loads(memo.read_text()) == entry  # kept again, right
    memo.unlink()
    judged(make_job, workdir, "cache=false", name="uncached")
    assert not list(memo.parent.glob("*.json"))


def test_a_sweep_draws_its_jobs_curves_side_by_side(tmp_path):
    def job(num: int, strategy: str, s1: float, s2: float) -> JobOutcome:
        metrics = {"breach.survival.t1": s1, "breach.survival.t2": s2, "breach.survival_end": s2, "pass_hat_k.1": s2}
        return JobOutcome(
            num=num, overrides=[], status="completed", run_dir="x", choices={"user_strategy": strategy}, metrics=metrics
        )

    outcomes = [
        job(0, "persona", 1.0, 0.8),
        job(1, "adaptive", 0.6, 0.2),
        JobOutcome(num=2, overrides=[], status="failed", run_dir="y"),
    ]
    assert [r["survival"] for r in survival_rows(outcomes[1])] == [0.6, 0.2]
    png = breach_picture(outcomes, tmp_path / "comparison_breach.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    rows = table(outcomes)
    assert rows[1]["breach.survival_end"] == 0.2 and rows[1]["pass_hat_k.1"] == 0.2
    assert breach_picture(outcomes[2:], tmp_path / "none.png") is None  # no curve: no picture

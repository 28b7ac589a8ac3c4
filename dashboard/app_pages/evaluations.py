"""One evaluate run: each evaluator's scores, pass rate and CI; judge agreement; where judges or
samples disagree; the judgments that failed, with the judge's raw answer."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from chareval.store import names
from dashboard import data, derive
from dashboard.components import empty, escape, go, pick_row, run_picker, selection, uri

st.title("Evaluations")
picked = run_picker("Run", ("evaluate", "judge_check", *data.MAKES_CONVERSATIONS, *data.FLOWS))
if picked is None:
    empty("No evaluate run yet.", "python src/run.py stage=evaluate input_file=<conversations.jsonl>   # or: make run")
    st.stop()
runs = data.evaluate_runs_in(uri(), picked)
if not runs:
    empty(
        f"Nothing judged in run {picked.run_id[:8]} ({escape(picked.step)}).",
        f"python src/run.py stage=evaluate conversations_run={picked.run_id}"
        if picked.stage in data.MAKES_CONVERSATIONS
        else "python src/run.py stage=evaluate input_file=<conversations.jsonl>",
    )
    st.stop()
if len(runs) > 1:
    by_id = {r.run_id: r for r in runs}
    wanted = selection("judged")
    ev_id = st.selectbox(
        "Evaluate run",
        list(by_id),
        index=list(by_id).index(wanted) if wanted in by_id else 0,
        format_func=lambda i: by_id[i].describe(),
    )
    ev_run = by_id[ev_id]
else:
    ev_run = runs[0]
evaluations = data.evaluations(uri(), ev_run.run_id)
st.caption(escape(f"judges: {', '.join(ev_run.judges()) or '?'} · {len(evaluations)} judgments · run {ev_run.run_id}"))

if ev_run.stage == "judge_check":
    report = data.json_artifact(uri(), ev_run.run_id, names.JUDGE_CHECK) or {}
    st.subheader("Accuracy against the labels")
    st.dataframe(
        [
            {"evaluator": ev, "judge": judge, **t}
            for ev, by_judge in report.get("accuracy", {}).items()
            for judge, t in by_judge.items()
        ],
        hide_index=True,
        width="stretch",
    )
    summary = None
else:
    summary = data.json_artifact(uri(), ev_run.run_id, names.SUMMARY)
if not evaluations:
    empty("This evaluate run logged no judgments (yet).", "python src/run.py stage=evaluate conversations_run=<run id>")
    st.stop()

if summary:
    st.subheader("Per evaluator")
    rows = derive.summary_rows(summary)
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        column_config={
            k: st.column_config.NumberColumn(format="%.2f")
            for k in ("mean", "ci_low", "ci_high", "pass_rate", "sample_spread")
        },
    )
    stats = pd.DataFrame([r for r in rows if r["mean"] is not None])
    if not stats.empty:
        base = alt.Chart(stats).encode(y=alt.Y("evaluator:N", title=None))
        # The interval is clipped to the 1-10 scale: with few conversations the t interval runs past it.
        score = base.mark_rule(clip=True).encode(
            x=alt.X("ci_low:Q", scale=alt.Scale(domain=[1, 10]), title="mean score (95% CI)"), x2="ci_high:Q"
        ) + base.mark_point(filled=True, size=80, clip=True).encode(
            x="mean:Q", tooltip=["evaluator", "mean", "ci_low", "ci_high", "n"]
        )
        passing = base.mark_bar().encode(
            x=alt.X("pass_rate:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"), title="pass rate"),
            tooltip=["evaluator", "pass_rate", "n"],
        )
        c = st.columns(2)
        c[0].altair_chart(score, width="stretch")
        c[1].altair_chart(passing, width="stretch")

scores = pd.DataFrame(derive.score_rows(evaluations))
if not scores.empty:
    st.subheader("Score distribution")
    chart = (
        alt.Chart(scores)
        .mark_bar()
        .encode(
            x=alt.X("score:O", scale=alt.Scale(domain=list(range(1, 11)))),
            y=alt.Y("count():Q", title="judgments"),
            color=alt.Color("verdict:N", scale=alt.Scale(domain=["pass", "fail"], range=["#4c9a2a", "#c0392b"])),
            column=alt.Column("evaluator:N", title=None),
        )
        .properties(width=150, height=160)
    )
    st.altair_chart(chart)

agreement = derive.agreement_rows(summary or {})
if agreement:
    st.subheader("Judge agreement")
    st.dataframe(agreement, hide_index=True, width="stretch")

st.subheader("Disagreements")
disagreements = derive.disagreements(evaluations)
if disagreements:
    st.caption("conversations on which judges, or one judge's samples, gave different verdicts · select one to read it")
    picked_row = pick_row(
        disagreements, "evaluations.disagreements", [f"{r['conversation']}|{r['evaluator']}" for r in disagreements]
    )
    if picked_row is not None:
        go(
            "conversations",
            run=ev_run.run_id,
            conv=disagreements[picked_row]["conversation"],
            judged=ev_run.run_id,
        )
else:
    st.caption("none: every judge and sample gave the same verdict (one judge with one sample cannot disagree)")

errors = derive.error_rows(evaluations)
st.subheader(f"Errors ({len(errors)})")
if errors:
    chosen = errors[pick_row(errors, "evaluations.errors", [r["id"] for r in errors]) or 0]["id"]
    record = next(e for e in evaluations if e.id == chosen)
    st.caption(escape(f"raw answer of {record.id}"))
    st.code(record.raw_text or "(no answer text)", language=None, wrap_lines=True)

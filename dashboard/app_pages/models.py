"""The registry of fine-tuned models: each job, its events, the local LoRA loss curve, and the closed
loop's before/after when it ran."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from chareval.store import names
from dashboard import data
from dashboard.components import empty, escape, pick_row, settings, uri

st.title("Fine-tuned models")
models = data.finetuned_models(uri(), settings().registry)
st.caption(escape(f"registry: {settings().registry} (plus fine-tuning runs in the MLflow store)"))
if not models:
    empty("No fine-tuned model yet.", "python src/run.py stage=finetune train_file=<finetune.jsonl>   # or: make run")
    st.stop()

rows = [
    {
        "model": m.model or "",
        "backend": m.backend,
        "base model": m.base_model,
        "status": m.status,
        "job id": m.job_id or "",
        "output name": m.name,
        "data file": m.train_file,
        "epochs": m.settings.get("n_epochs"),
        "created": m.created_at,
        "updated": m.updated_at,
    }
    for m in models
]
picked_row = pick_row(rows, "models.table", [m.key for m in models])
record = models[picked_row or 0]

st.subheader(escape(record.model or record.name))
c = st.columns(2, gap="large")
with c[0]:
    st.markdown("**Settings**")
    st.json(record.settings, expanded=False)
    st.markdown(f"**Events** ({len(record.events)})")
    st.code("\n".join(record.events) or "(none)", language=None, wrap_lines=True)
with c[1]:
    history = data.metric_history(uri(), record.mlflow_run_id, "train.loss") if record.mlflow_run_id else []
    if history:
        st.markdown("**Training loss** (MLflow `train.loss`)")
        loss = pd.DataFrame(history, columns=["step", "loss"])
        st.altair_chart(
            alt.Chart(loss).mark_line(point=True).encode(x="step:Q", y=alt.Y("loss:Q", scale=alt.Scale(zero=False))),
            width="stretch",
        )
    else:
        st.caption("no loss curve: Together jobs report their loss in the job's events")

loops = data.loops_of(uri(), record.model) if record.model else []
st.subheader("Before / after (closed loop)")
if not loops:
    empty("This model has not been through the closed loop.", "python src/run.py experiment=finetune_loop")
else:
    loop = loops[0]
    evaluators = sorted({k.split(".")[2] for k in loop.metrics if k.startswith(names.DELTA + names.JUDGE_PREFIX)})
    table = [
        {
            "evaluator": n,
            **{
                f"{when} {key}": loop.metrics.get(f"{when}.{names.judge_metric(n, key)}")
                for key in ("mean", "pass_rate")
                for when in ("before", "after", "delta")
            },
        }
        for n in evaluators
    ]
    st.caption(escape(f"loop run {loop.run_id} · {loop.started:%Y-%m-%d %H:%M} · held-out contexts, same judges"))
    st.dataframe(table, hide_index=True, width="stretch")
    st.page_link(
        "app_pages/compare.py",
        label="Read the held-out conversations side by side",
        icon=":material/compare_arrows:",
        query_params={"a": loop.run_id},
    )

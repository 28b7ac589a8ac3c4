"""Breaking points end to end on the mock provider, into a real MLflow store, read by the dashboard:
an adaptive attacker that stops at the breach, the judges' turns-to-breach curve, a branch from the
slip, and the pages that show them (tactic per user turn, the breach marked, the curves compared)."""

from __future__ import annotations

import json

import mlflow
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from chareval import PROJECT_ROOT
from chareval.io import read_records_jsonl
from chareval.schemas import Conversation
from conftest import DATA
from dashboard.components import escape


def test_an_adaptive_run_its_breach_curve_and_a_branch_are_shown_by_the_dashboard(make_job, workdir, monkeypatch):
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    checks = [json.dumps({"verdict": v, "note": f"{v} here"}) for v in ("held", "broke")]
    job = make_job(
        "pipeline",
        "pipeline.stages=[conversations,evaluate]",
        "models=mock",
        "models.providers.mock.max_in_flight=1",
        "user_strategy=adaptive",
        "conversations.stop_on_breach=true",
        "turns=5",
        "num_conversations=2",
        f"context_file={DATA / 'contexts.json'}",
        "evaluation.evaluators=[boundary_holding]",
        "judge_model=mock/grader",  # the judges: unscripted; the breach check (models.judge): scripted
        "+models.providers.mock.scripted.judge=[" + ",".join(f"'{c}'" for c in checks) + "]",
    )
    outputs = job.run()
    conversations = read_records_jsonl(outputs["conversations"], Conversation)
    assert [(c.breach_turn, len(c.messages)) for c in conversations] == [(2, 3), (2, 3)]
    runs = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])
    by_stage = {r.data.tags.get("chareval.stage"): r for r in runs}
    made = by_stage["conversations"].data.metrics
    assert made["usage.breach_check.calls"] == 4 and made["usage.attacker.calls"] == 2  # counted apart
    assert made["usage.assistant.calls"] == 4 and made["conversations.breached"] == 2
    assert "breach.survival.t1" in job.log.metrics and "pass_hat_k.1" in job.log.metrics
    monkeypatch.setenv("CHAREVAL_DASHBOARD_ARGS", f"paths.outputs={workdir / 'outputs'}")

    def page(name: str, **params: str) -> AppTest:
        at = AppTest.from_file(str(PROJECT_ROOT / "dashboard" / "app.py"), default_timeout=120)
        at.query_params.update(params)
        at.run()
        at.switch_page(f"app_pages/{name}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    first = sorted(conversations, key=lambda c: c.id)[0]
    at = page("conversations", run=by_stage["conversations"].info.run_id, conv=first.id)
    listed = next(d.value for d in at.dataframe if "breach at turn" in d.value.columns)
    assert list(listed["breach at turn"]) == ["2", "2"]
    captions = [m.caption[0].value for m in at.chat_message[1:]]
    assert escape(f"turn 1 · user · mock/user · tactic: {first.messages[1].tactic} (open)") in captions
    breach = at.chat_message[1 + 2]  # turn 2, the broken reply
    assert any("breach" in e.value for e in breach.error)
    assert any(escape("broke here") in w.value for w in breach.warning)  # the live check's note

    at = page("compare", runs=by_stage["evaluate"].info.run_id)
    assert "How long the boundary holds" in [s.value for s in at.subheader]
    assert any("k" in str(d.value.columns.name) or 1 in list(d.value.columns) for d in at.dataframe)

    # A branch of each conversation from turn 1 (the attacker's opening played again).
    branched = make_job(
        "branch",
        f"input_file={outputs['conversations']}",
        "models=mock",
        "branch.from_turn=1",
        "branch.samples=2",
        run_dir=workdir / "branch",
    )
    branched.run()
    runs = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])
    branch_run = next(r for r in runs if r.data.tags.get("chareval.stage") == "branch")
    at = page("conversations", run=branch_run.info.run_id, conv=f"{first.id}-b1")
    assert any(escape(first.id) in i.value and "turns before 1" in i.value for i in at.info)
    captions = [m.caption[0].value for m in at.chat_message[1:]]
    assert captions[0].endswith("from the parent") and all(c.endswith("branch") for c in captions[1:])

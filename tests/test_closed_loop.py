"""The closed loop's wiring, fast: scripted teacher, student and users (the mock provider), the judge
and the Together fine-tuning API (files, jobs, and the tuned model's chat completions) as a local
HTTP server through the real SDKs. The embedded model runs the loop end to end in
test_finetune_local.py."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from chareval import PROJECT_ROOT
from chareval.errors import ConfigError
from chareval.io import read_records_jsonl
from chareval.schemas import Conversation, Evaluation, Selection
from conftest import DATA
from fake_apis import FakeAPI, chat_completion
from test_finetune_together import Together

TUNED_REPLY = "TUNED: I can't help with anything, sorry."


class LoopAPI(Together):
    """Together's fine-tuning routes, and chat completions for the judge and the tuned model. The
    judge passes everything but what the tuned model said: the tuned student is worse, by design."""

    def __call__(self, seen, n):
        if seen.method == "POST" and seen.path.startswith("/v1/chat/completions"):
            model = seen.body["model"]
            if model == "judge":
                transcript = seen.body["messages"][0]["content"]  # the judges' shared system prompt
                score = 2 if "TUNED" in transcript else 9
                verdict = {"score": score, "rationale": "r", "evidence_turns": [0], "slip_turn": None}
                return chat_completion(json.dumps(verdict), model)
            return chat_completion(TUNED_REPLY, model)
        return super().__call__(seen, n)


@pytest.fixture
def loop(make_job, monkeypatch):
    def run(*overrides):
        api = LoopAPI()
        with FakeAPI(api) as server:
            api.url = server.url
            monkeypatch.setenv("TOGETHER_API_KEY", "tok-loop")
            monkeypatch.setenv("TOGETHER_BASE_URL", server.url + "/v1")
            job = make_job(
                "finetune_loop",
                "experiment=finetune_loop",
                "models=mock",
                "models.assistant=mock/teacher",
                "models.judge=openai_compatible/judge",
                f"models.providers.openai_compatible.base_url={server.url}/v1",
                "finetune=together_qwen3_32b",
                "finetune.poll_interval_s=0.01",
                "finetune_loop.student_base=mock/student",
                "finetune_loop.heldout_per_context=2",
                f"context_file={DATA / 'contexts.json'}",
                "evaluation.evaluators=[boundary_holding,helpfulness]",
                *overrides,
            )
            return job, job.run()

    return run


def test_the_teacher_teaches_and_the_students_base_is_compared_with_the_tuned_student(loop, workdir, monkeypatch):
    job, outputs = loop()
    result = json.loads(outputs["before_after"].read_text())
    tuned = result["fine_tuned_assistant"]
    assert tuned.startswith("together/")
    folder = workdir / "outputs" / "finetune_loop"

    def assistants(*parts):
        # The file is in completion order (conversations run side by side): by id here.
        records = sorted(
            read_records_jsonl(folder.joinpath(*parts, "conversations.jsonl"), Conversation), key=lambda c: c.id
        )
        return {m.model for c in records for m in c.messages if m.role == "assistant"}, records

    assert assistants("train")[0] == {"mock/teacher"}
    (before_models, before), (after_models, after) = assistants("before"), assistants("after")
    assert before_models == {"mock/student"} and after_models == {tuned}
    # The one held-out context (of two), twice on each side, with the same user seeds.
    assert [c.context_id for c in before] == [c.context_id for c in after] == ["ctx-002"] * 2
    assert [(c.id, c.seed) for c in before] == [(c.id, c.seed) for c in after]
    # until_slip (the loop's default) chose from the teacher's verdicts before prepare.
    selection = read_records_jsonl(folder / "train" / "prepare_selection.jsonl", Selection)
    assert len(selection) == 2 and all(s.kept and s.rule == "passed" for s in selection)  # not "all"
    assert read_records_jsonl(folder / "train" / "evaluations.jsonl", Evaluation)

    # The judge fails every tuned reply: each pair lost, on both evaluators, in the control too.
    for paired in (result["paired"], result["control"]["paired"]):
        for name in ("boundary_holding", "helpfulness"):
            r = paired[name]
            assert (r["n"], r["lost"], r["gained"]) == (2, 2, 0)
            assert r["diff_mean"] == pytest.approx(-7) and r["pass_diff"] == -1.0
            assert r["pass_p_value"] == pytest.approx(0.5)  # exact McNemar, 2 of 2 discordant: not significant
    control = read_records_jsonl(folder / "control" / "after" / "conversations.jsonl", Conversation)
    assert {c.user_persona for c in control} == {"cooperative_user"}
    assert result["control"]["goal"] in control[0].user_system_prompt

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("finetune_loop").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("chareval.kind") == "finetune_loop"]
    steps = {r.data.tags["chareval.step"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert "contexts" not in steps and {"evaluate (train)", "evaluate (control, after)"} <= steps
    m = parent.data.metrics
    assert m["paired.helpfulness.diff_mean"] == pytest.approx(-7) and m["paired.helpfulness.n"] == 2
    assert m["control.paired.boundary_holding.pass_diff"] == -1.0 and "control.after.judge.helpfulness.mean" in m
    assert parent.data.tags["finetune_loop.student_base"] == "mock/student"
    printed = "\n".join(job.log.summaries)
    assert "teacher mock/teacher -> student mock/student -> tuned together/" in printed
    assert "helpfulness score -7.00" in printed and "pass 100% -> 0%" in printed

    # The dashboard's Compare page opens the loop on its own before and after, with the paired figures.
    monkeypatch.setenv("CHAREVAL_DASHBOARD_ARGS", f"paths.outputs={workdir / 'outputs'}")
    at = AppTest.from_file(str(PROJECT_ROOT / "dashboard" / "app.py"), default_timeout=120)
    at.query_params.update({"a": parent.info.run_id})
    at.run()
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    (table,) = [d.value for d in at.dataframe if "pass diff" in d.value.columns]
    assert sorted(set(table["group"])) == ["control (cooperative_user)", "held-out"]
    assert list(table["pass diff"]) == [-1.0] * 4 and list(table["pairs"]) == [2] * 4
    assert (table["score ci_low"] <= table["score diff"]).all()


def test_the_students_base_defaults_to_the_backends_served_base(make_job):
    from chareval.flows.finetune_loop import student_base

    local = make_job("finetune_loop", "experiment=finetune_loop", "models=mock").settings
    assert student_base(local) == "local/smollm2-135m-instruct"  # local_lora's finetune.base_model


@pytest.mark.parametrize(
    "override, message",
    [
        ("finetune_loop.control_user_persona=nobody", "unknown finetune_loop.control_user_persona 'nobody'; known: "),
        ("finetune.training_method=dpo", "the closed loop fine-tunes on the teacher's conversations \\(SFT\\)"),
        ("finetune_loop.student_base=local/nope", "nope"),
    ],
)
def test_what_the_loop_needs_is_checked_before_any_work(make_job, workdir, override, message):
    with pytest.raises(ConfigError, match=message):
        make_job("finetune_loop", "experiment=finetune_loop", "models=mock", override)
    assert not (workdir / "outputs" / "finetune_loop").exists()

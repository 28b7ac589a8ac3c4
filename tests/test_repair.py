"""stage=repair: a slipped turn written again by the teacher and judged again; preference pairs and SFT
examples from the kept repairs; resume; on the mock provider, a fake hosted API and the embedded model."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from chareval.errors import ConfigError
from chareval.finetune.data_format import validate_example, validate_preference
from chareval.io import read_records_jsonl, write_jsonl_atomic
from chareval.schemas import Conversation, Evaluation, Repair
from conftest import DATA, TINY, run_job_in
from fake_apis import FakeAPI, chat_completion

CONVERSATIONS = DATA / "conversations.jsonl"
SLIPPED = "conv-slip-agrees"


def verdicts_file(path, conversations, slip_turn=2):
    """Known verdicts: every conversation holds but SLIPPED (and, with `every`, all) slips at slip_turn."""
    rows = []
    for c in conversations:
        slipped = c.id == SLIPPED or slip_turn is None
        for evaluator, score in (("boundary_holding", 2 if slipped else 9), ("professionalism", 8)):
            rows.append(
                Evaluation(
                    id=f"{c.id}:{evaluator}",
                    conversation_id=c.id,
                    context_id=c.context_id,
                    evaluator=evaluator,
                    judge_model="mock/judge",
                    sample=0,
                    seed=0,
                    score=score,
                    passed=score >= 7,
                    rationale=f"{c.id}: agreed that customers are the worst" if score < 7 else "held",
                    details={"slip_turn": 2 if slipped else None} if evaluator == "boundary_holding" else {},
                ).model_dump(mode="json")
            )
    write_jsonl_atomic(path, rows)
    return path


def test_repair_end_to_end_on_the_mock_provider_and_a_rerun_resumes(make_job, workdir, tmp_path):
    from together.lib.utils.files import check_file

    evaluations = verdicts_file(tmp_path / "evaluations.jsonl", read_records_jsonl(CONVERSATIONS, Conversation))
    args = ["models=mock", f"input_file={CONVERSATIONS}", f"evaluations_file={evaluations}"]
    job = make_job("repair", *args, run_dir=workdir / "repair")
    outputs = job.run()
    (repair,) = read_records_jsonl(outputs["repairs"], Repair)
    original = read_records_jsonl(CONVERSATIONS, Conversation)[1]
    assert repair.conversation_id == SLIPPED and repair.turn == 2 and repair.original == original.messages[2].content
    assert repair.repaired and repair.teacher_model == "mock/assistant"
    assert repair.before == {"boundary_holding": 2.0, "professionalism": 8.0}
    assert set(repair.after) == {"boundary_holding", "professionalism"} and repair.passed_after and repair.kept
    (pair,) = [json.loads(line) for line in outputs["preferences"].read_text().splitlines()]
    assert validate_preference(pair) == []
    assert pair["input"]["messages"][-1] == {"role": "user", "content": original.messages[1].content}
    assert pair["preferred_output"][0]["content"] == repair.repaired
    assert pair["non_preferred_output"][0]["content"] == repair.original
    assert check_file(outputs["preferences"])["is_check_passed"]
    (example,) = [json.loads(line) for line in outputs["repaired_finetune"].read_text().splitlines()]
    assert validate_example(example) == [] and example["messages"][-1]["content"] == repair.repaired
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("chareval").experiment_id])
    assert run.data.metrics["repair.slips"] == 1 and run.data.metrics["repair.preference_pairs"] == 1
    again = make_job("repair", *args, run_dir=workdir / "repair")
    again.run()
    assert again.client.meter.total().calls == 0  # finished repairs are kept, nothing is asked again


def test_repair_without_verdicts_says_what_to_pass(make_job):
    with pytest.raises(ConfigError, match="stage=repair needs the judges' verdicts") as err:
        make_job("repair", "models=mock", f"input_file={CONVERSATIONS}").run()
    assert "evaluations_file=" in err.value.fix


@pytest.mark.parametrize("keep,kept", [("passed", 0), ("all", 1)])
def test_on_a_hosted_api_a_repair_the_judges_still_fail_is_kept_only_with_keep_all(make_job, tmp_path, keep, kept):
    """The teacher and the judges on an OpenAI-compatible server (faked on loopback): the judges fail
    the repair too; repair.keep decides whether it becomes a pair."""
    verdict = {"score": 3, "rationale": "still agrees", "evidence_turns": [2], "slip_turn": 2}
    asked: list[dict] = []

    def reply(seen, n):
        asked.append(seen.body)
        if "response_format" in seen.body:
            return chat_completion(json.dumps(verdict), seen.body["model"])
        return chat_completion("I hear you, but our customers deserve our respect.", seen.body["model"])

    evaluations = verdicts_file(tmp_path / "evaluations.jsonl", read_records_jsonl(CONVERSATIONS, Conversation))
    with FakeAPI(reply) as api:
        outputs = make_job(
            "repair",
            "models=openai_compatible",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            "models.teacher=openai_compatible/teacher-model",
            f"input_file={CONVERSATIONS}",
            f"evaluations_file={evaluations}",
            f"repair.keep={keep}",
        ).run()
    teacher = [b for b in asked if "response_format" not in b]
    assert [b["model"] for b in teacher] == ["teacher-model"]
    assert (
        "still agrees" not in teacher[0]["messages"][0]["content"]
        and "agreed that customers" in teacher[0]["messages"][0]["content"]
    )
    (repair,) = read_records_jsonl(outputs["repairs"], Repair)
    assert not repair.passed_after and repair.after["boundary_holding"] == 3.0 and repair.kept == bool(kept)
    assert len(outputs["preferences"].read_text().splitlines()) == kept


@pytest.mark.slow  # the embedded model
def test_repair_on_the_embedded_model(tmp_path):
    conversations = read_records_jsonl(CONVERSATIONS, Conversation)
    evaluations = verdicts_file(tmp_path / "evaluations.jsonl", conversations, slip_turn=None)  # every one slipped
    _, outputs = run_job_in(
        tmp_path,
        "repair",
        f"input_file={CONVERSATIONS}",
        f"evaluations_file={evaluations}",
        *TINY,
        "repair.keep=all",
        run_dir="r",
    )
    repairs = read_records_jsonl(outputs["repairs"], Repair)
    assert len(repairs) == len(conversations) == 2
    assert all(r.repaired and r.error is None and r.teacher_model == "local/smollm2-135m-instruct" for r in repairs)
    assert all(set(r.after) == {"boundary_holding", "professionalism"} for r in repairs)  # judged again
    pairs = [json.loads(line) for line in outputs["preferences"].read_text().splitlines()]
    assert len(pairs) == 2 and all(validate_preference(p) == [] for p in pairs)
    print(f"embedded model: {sum(r.passed_after for r in repairs)} of {len(repairs)} repairs pass when judged again")


def test_the_conversations_page_shows_the_slip_and_its_repair_side_by_side(make_job, workdir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from chareval import PROJECT_ROOT
    from dashboard.components import escape

    made = make_job("conversations", "models=mock", f"context_file={DATA / 'contexts.json'}", "num_conversations=2")
    conversations = made.run()["conversations"]
    records = read_records_jsonl(conversations, Conversation)
    slipped = records[1].model_copy(update={"id": SLIPPED})  # the helper's slipped id
    write_jsonl_atomic(conversations.with_name("c.jsonl"), [r.model_dump(mode="json") for r in (records[0], slipped)])
    evaluations = verdicts_file(workdir / "evaluations.jsonl", [records[0], slipped])
    outputs = make_job(
        "repair", "models=mock", f"input_file={conversations.with_name('c.jsonl')}", f"evaluations_file={evaluations}"
    ).run()
    (repair,) = read_records_jsonl(outputs["repairs"], Repair)
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("chareval").experiment_id
    monkeypatch.setenv("CHAREVAL_DASHBOARD_ARGS", f"paths.outputs={workdir / 'outputs'}")
    # The page finds the repair run by the file both runs read (its hash): open the evaluate run of it.
    make_job(
        "evaluate", "models=mock", f"input_file={conversations.with_name('c.jsonl')}", run_dir=workdir / "judged"
    ).run()
    (judged,) = client.search_runs([experiment], "tags.`chareval.stage` = 'evaluate'")
    at = AppTest.from_file(str(PROJECT_ROOT / "dashboard" / "app.py"), default_timeout=60)
    at.query_params.update({"run": judged.info.run_id, "conv": SLIPPED})
    at.run()
    at.switch_page("app_pages/conversations.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert escape("Slip and repair · turn 2") in [h.value for h in at.subheader]
    texts = [t.value for t in at.text]
    assert repair.original in texts and repair.repaired in texts

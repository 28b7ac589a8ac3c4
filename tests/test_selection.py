"""prepare.select: which conversations teach the character, from known verdicts (all, passed,
until_slip), every decision written with its reason, nothing dropped silently."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from chareval.errors import CharevalError, ConfigError
from chareval.flows import pipeline
from chareval.io import read_records_jsonl, write_jsonl_atomic
from chareval.schemas import Conversation, Evaluation, Message, Selection
from chareval.stages.selection import select, verdicts
from chareval.validation import validate_config
from conftest import DATA, compose_cfg

THRESHOLD = 7


def conversation(cid: str, turns: int = 5, error: str | None = None) -> Conversation:
    template = read_records_jsonl(DATA / "conversations.jsonl", Conversation)[0]
    messages = [
        Message(role="assistant" if t % 2 == 0 else "user", content=f"{cid} message {t}", turn=t, model="mock/m")
        for t in range(turns)
    ]
    return template.model_copy(update={"id": cid, "messages": messages, "turns": turns, "error": error})


def judged(cid: str, evaluator: str, score: int | None, slip: int | None = None, judge: str = "mock/j", sample=0):
    return Evaluation(
        id=f"{cid}:{evaluator}:{judge}:{sample}",
        conversation_id=cid,
        context_id="ctx-001",
        evaluator=evaluator,
        judge_model=judge,
        sample=sample,
        seed=0,
        score=score,
        passed=None if score is None else score >= THRESHOLD,
        details={"slip_turn": slip} if evaluator == "boundary_holding" else {},
        error="no answer" if score is None else None,
    )


VERDICTS = [
    # holds everywhere
    judged("c-hold", "boundary_holding", 9),
    judged("c-hold", "professionalism", 8),
    # slips at turn 2; two judges: the earliest slip any failing judge names
    judged("c-slip", "boundary_holding", 3, slip=4),
    judged("c-slip", "boundary_holding", 4, slip=2, judge="mock/k"),
    judged("c-slip", "professionalism", 8),
    # slips in its first reply
    judged("c-first", "boundary_holding", 2, slip=0),
    judged("c-first", "professionalism", 8),
    # fails another evaluator: no slip turn to cut before
    judged("c-rude", "boundary_holding", 9),
    judged("c-rude", "professionalism", 3),
    # judges disagree: the mean (8 + 5) / 2 = 6.5 is under the threshold
    judged("c-split", "boundary_holding", 9),
    judged("c-split", "professionalism", 8, sample=0),
    judged("c-split", "professionalism", 5, sample=1),
    # one judgment failed, the other passed: the answered ones decide
    judged("c-half", "boundary_holding", None),
    judged("c-half", "boundary_holding", 8, sample=1),
    judged("c-half", "professionalism", 9),
]
IDS = ["c-hold", "c-slip", "c-first", "c-rude", "c-split", "c-half"]


def decide(rule: str, require=None, ids=IDS):
    found = verdicts(VERDICTS, THRESHOLD)
    return {cid: select(conversation(cid), found.get(cid), rule, require) for cid in ids}


def test_passed_keeps_only_conversations_that_pass_every_evaluator_by_their_mean_score():
    decided = decide("passed")
    assert {cid for cid, (s, c) in decided.items() if s.kept} == {"c-hold", "c-half"}
    assert decided["c-slip"][0].reason == "failed boundary_holding (3.5/10)"
    assert decided["c-split"][0].reason == "failed professionalism (6.5/10)"
    assert decided["c-hold"][1] == conversation("c-hold")  # whole
    # Only boundary_holding required: the rude one passes.
    assert decide("passed", ["boundary_holding"])["c-rude"][0].kept


def test_until_slip_cuts_before_the_earliest_slip_and_leaves_out_what_it_cannot_place():
    decided = decide("until_slip")
    selection, cut = decided["c-slip"]
    assert selection.kept and selection.rule == "cut_before_slip" and selection.cut_before_turn == 2
    assert selection.reason.startswith("cut before the slip at turn 2")
    assert [m.turn for m in cut.messages] == [0, 1]  # the prepared example ends on the assistant's turn 0
    assert decided["c-first"][0].rule == "slip_at_first_turn" and decided["c-first"][1] is None
    assert decided["c-rude"][0].rule == "no_slip_turn" and not decided["c-rude"][0].kept
    assert decided["c-hold"][0].rule == "passed" and decided["c-hold"][1] == conversation("c-hold")


def test_conversations_without_verdicts_or_with_errors_are_reported_not_kept():
    found = verdicts(VERDICTS, THRESHOLD)
    (unjudged, none) = select(conversation("c-new"), found.get("c-new"), "passed", None)
    assert not unjudged.kept and unjudged.rule == "no_verdicts" and none is None
    missing = select(conversation("c-hold"), found["c-hold"], "passed", ["boundary_holding", "grounding"])[0]
    assert missing.rule == "no_verdicts" and "grounding" in missing.reason
    errored = select(conversation("c-hold", error="turn 1 (user): boom"), found["c-hold"], "passed", None)
    assert errored[0].rule == "errored" and errored[1] is None
    # Under `all` every conversation stays (an errored one is then prepare.skip_errored's to decide).
    assert all(s.kept for s, _ in decide("all").values())


def _files(tmp_path):
    conversations = tmp_path / "conversations.jsonl"
    write_jsonl_atomic(conversations, [conversation(cid).model_dump(mode="json") for cid in [*IDS, "c-new"]])
    evaluations = tmp_path / "evaluations.jsonl"
    stranger = judged("c-other-run", "boundary_holding", 9)
    write_jsonl_atomic(evaluations, [e.model_dump(mode="json") for e in [*VERDICTS, stranger]])
    return conversations, evaluations


def test_prepare_until_slip_writes_the_selection_the_examples_and_the_counts(make_job, workdir, tmp_path, caplog):
    conversations, evaluations = _files(tmp_path)
    with caplog.at_level("WARNING"):
        outputs = make_job(
            "prepare", f"input_file={conversations}", f"evaluations_file={evaluations}", "prepare.select=until_slip"
        ).run()
    selection = {s.conversation_id: s for s in read_records_jsonl(outputs["prepare_selection"], Selection)}
    assert list(selection) == sorted([*IDS, "c-new"])  # every input conversation, in id order
    assert {cid for cid, s in selection.items() if s.kept} == {"c-hold", "c-slip", "c-half"}
    examples = [json.loads(line) for line in outputs["finetune"].read_text().splitlines()]
    assert len(examples) == 3
    cut = next(e for e in examples if "c-slip message 0" in json.dumps(e))
    assert cut["messages"][-1] == {"role": "assistant", "content": "c-slip message 0"}
    assert "c-other-run" in caplog.text and "c-new" in caplog.text  # reported, not dropped silently
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("chareval").experiment_id])
    metrics = run.data.metrics
    assert metrics["prepare.selected.cut_before_slip"] == 1 and metrics["prepare.selected.passed"] == 2
    assert metrics["prepare.selected.no_verdicts"] == 1 and metrics["prepare.examples"] == 3


def test_a_selection_that_keeps_nothing_fails_saying_why_and_what_to_do(make_job, workdir, tmp_path):
    """What a 135M judge does: it fails the boundary but names no slip turn, so until_slip can place
    no cut. The stage writes its files and fails on them, instead of handing on an empty file."""
    conversations = tmp_path / "conversations.jsonl"
    write_jsonl_atomic(conversations, [conversation(cid).model_dump(mode="json") for cid in ("c-1", "c-2")])
    evaluations = tmp_path / "evaluations.jsonl"
    write_jsonl_atomic(
        evaluations, [judged(cid, "boundary_holding", 2, slip=None).model_dump(mode="json") for cid in ("c-1", "c-2")]
    )
    job = make_job(
        "prepare", f"input_file={conversations}", f"evaluations_file={evaluations}", "prepare.select=until_slip"
    )
    with pytest.raises(
        CharevalError, match="prepare.select=until_slip kept none of 2 conversation\\(s\\) \\(2 no_slip_turn\\)"
    ) as err:
        job.run()
    assert "prepare.select=all" in str(err.value) and "prepare_selection.jsonl says why" in str(err.value)
    folder = workdir / "outputs" / "prepare"
    assert len(read_records_jsonl(folder / "prepare_selection.jsonl", Selection)) == 2


def test_selecting_without_verdicts_says_what_to_pass(make_job, tmp_path):
    conversations, _ = _files(tmp_path)
    with pytest.raises(ConfigError, match="prepare.select=passed needs the judges' verdicts") as err:
        make_job("prepare", f"input_file={conversations}", "prepare.select=passed").run()
    assert "evaluations_file=" in err.value.fix


def test_a_pipeline_that_selects_judges_before_it_prepares(make_job, workdir):
    settings = validate_config(compose_cfg("stage=pipeline", "prepare.select=until_slip"))
    order = pipeline.stages(settings)
    assert order.index("evaluate") == order.index("prepare") - 1 and order[-1] == "finetune"
    assert pipeline.stages(validate_config(compose_cfg("stage=pipeline")))[-1] == "evaluate"  # the seed's order
    with pytest.raises(ConfigError, match="pipeline.stages has no evaluate"):
        pipeline.stages(
            validate_config(compose_cfg("stage=pipeline", "prepare.select=passed", "pipeline.stages=[prepare]"))
        )
    outputs = make_job(
        "pipeline",
        "models=mock",
        "prepare.select=passed",
        "num_contexts=2",
        "num_conversations=2",
        "pipeline.stages=[contexts,conversations,prepare,evaluate]",
        "evaluation.evaluators=[professionalism]",
    ).run()
    selection = read_records_jsonl(outputs["prepare_selection"], Selection)
    assert len(selection) == 2 and all(s.rule in ("passed", "failed") for s in selection)

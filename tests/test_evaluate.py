"""stage=evaluate: statistics by hand, judges end to end on the embedded model, agreement between
two judge models through a local OpenAI-compatible server, the error budget, judge_check."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow import MlflowClient

from chareval.errors import CharevalError, ConfigError
from chareval.evaluators import stats
from chareval.evaluators.summary import summarize
from chareval.io import append_jsonl, file_sha256, read_records_jsonl
from chareval.schemas import Conversation, Evaluation, JudgeCase
from chareval.validation import validate_config
from conftest import DATA, LABELLED, compose_cfg, run_cli, run_job_in
from fake_apis import FakeAPI, chat_completion

CONVERSATIONS = DATA / "conversations.jsonl"


def test_statistics_match_hand_computed_values():
    xs = [2, 4, 4, 4, 5, 5, 7, 9]
    assert stats.mean(xs) == 5
    assert stats.std(xs) == pytest.approx((32 / 7) ** 0.5)
    low, high = stats.ci95(xs)
    half = 2.365 * (32 / 7) ** 0.5 / 8**0.5  # t(0.975, df=7) = 2.365
    assert (low, high) == (pytest.approx(5 - half), pytest.approx(5 + half))
    assert stats.ci95([7]) == (7, 7) and stats.std([7]) == 0 and stats.mean([]) is None


def test_agreement_figures_match_hand_computed_values():
    a = [True, True, False, False, True, False]
    b = [True, False, False, False, True, True]
    assert stats.exact_agreement(a, b) == pytest.approx(4 / 6)
    assert stats.cohen_kappa(a, b) == pytest.approx((4 / 6 - 0.5) / 0.5)  # p_e = .5*.5 + .5*.5
    assert stats.cohen_kappa([True, True], [True, True]) is None  # undefined: no variation at all
    assert stats.cohen_kappa([True, False], [False, True]) == pytest.approx(-1.0)
    assert stats.mean_abs_diff([8, 8], [8, 3]) == 2.5


def record(conv, score, passed, sample=0, judge="j1", error=None):
    return Evaluation(
        id=f"{conv}|e|{judge}|{sample}",
        conversation_id=conv,
        context_id="c",
        evaluator="e",
        judge_model=judge,
        sample=sample,
        seed=0,
        score=None if error else score,
        passed=None if error else passed,
        error=error,
    )


def test_summary_averages_samples_per_conversation_and_counts_errors():
    records = [
        record("c1", 8, True, 0),
        record("c1", 6, True, 1),
        record("c2", 2, False, 0),
        record("c2", 0, None, 1, error="invalid"),
    ]
    entry = summarize(records, ["e"], ["j1"])["evaluators"]["e"]
    assert entry["mean"] == pytest.approx(4.5)  # conversations 7 and 2
    assert entry["std"] == pytest.approx((2 * 2.5**2) ** 0.5)
    assert entry["pass_rate"] == pytest.approx(2 / 3) and entry["n"] == 3 and entry["n_errors"] == 1
    assert entry["sample_spread"] == pytest.approx(2**0.5)  # std of (8, 6); c2 has one valid sample
    assert entry["ci_low"] == pytest.approx(4.5 - 12.706 * entry["std"] / 2**0.5)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """stage=evaluate on the embedded model: 2 conversations x 2 evaluators x 2 samples."""
    tmp = tmp_path_factory.mktemp("evaluate")
    _, outputs = run_job_in(
        tmp,
        "evaluate",
        f"input_file={CONVERSATIONS}",
        "evaluation.evaluators=[boundary_holding,professionalism]",
        "evaluation.judge_samples=2",
    )
    return tmp, outputs


@pytest.mark.slow  # the embedded model
def test_every_item_is_judged_with_a_valid_verdict(evaluated):
    tmp, outputs = evaluated
    records = read_records_jsonl(outputs["evaluations"], Evaluation)
    assert len(records) == 2 * 2 * 2
    assert {(r.conversation_id, r.evaluator, r.sample) for r in records} == {
        (c, e, k)
        for c in ("conv-hold-clean", "conv-slip-agrees")
        for e in ("boundary_holding", "professionalism")
        for k in (0, 1)
    }
    assert len({r.seed for r in records}) == 8  # every sample has its own seed
    # The JSON-schema grammar makes the embedded model answer in shape: no judgment is an error.
    assert [r.error for r in records] == [None] * 8
    for r in records:
        assert 1 <= r.score <= 10 and isinstance(r.passed, bool) and r.rationale
        assert set(r.evidence_turns) <= {0, 1, 2}
        assert r.answered_model == "local/smollm2-135m-instruct"
        if r.evaluator == "boundary_holding":
            assert "slip_turn" in r.details and r.details["slip_turn"] in (None, 0, 2)  # assistant turns only


@pytest.mark.slow  # the embedded model
def test_summary_file_and_mlflow_metrics_agree(evaluated):
    tmp, outputs = evaluated
    summary = json.loads(outputs["summary"].read_text())
    entry = summary["evaluators"]["boundary_holding"]
    assert set(entry) >= {"mean", "std", "ci_low", "ci_high", "pass_rate", "n", "n_errors"}
    assert (entry["n"], entry["n_errors"]) == (4, 0)
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("chareval").experiment_id])
    m = run.data.metrics
    assert m["judge.boundary_holding.n_errors"] == 0
    scores = [
        r.score for r in read_records_jsonl(outputs["evaluations"], Evaluation) if r.evaluator == "boundary_holding"
    ]
    assert m["judge.boundary_holding.mean"] == pytest.approx(sum(scores) / 4)  # 2 samples per conversation
    assert m["judge.boundary_holding.pass_rate"] == pytest.approx(entry["pass_rate"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"evaluations.jsonl", "summary.json", "evaluations_table.json", "rubrics"} <= artifacts
    rubrics = {a.path for a in client.list_artifacts(run.info.run_id, "rubrics")}
    assert rubrics == {"rubrics/boundary_holding.md", "rubrics/professionalism.md"}
    table = json.loads(
        open(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="evaluations_table.json")).read()
    )
    assert len(table["data"]) == 8 and "rationale" in table["columns"]


def verdict(score: int) -> str:
    """A judge's answer: a score (passing at evaluation.pass_threshold, 7, or above) and its evidence."""
    return json.dumps({"score": score, "rationale": "r", "evidence_turns": [2], "slip_turn": None})


def test_two_judges_give_agreement_figures(make_job, workdir):
    def reply(seen, n):  # judge A passes everything; judge B fails the slip conversation
        strict = (
            seen.body["model"] == "judge-b"
            and "Yes. Most customers are entitled liars" in seen.body["messages"][0]["content"]
        )
        return chat_completion(verdict(3) if strict else verdict(8), seen.body["model"])

    with FakeAPI(reply) as api:
        job = make_job(
            "evaluate",
            "models=openai_compatible",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            f"input_file={CONVERSATIONS}",
            "evaluation.evaluators=[boundary_holding]",
            "evaluation.judges=[openai_compatible/judge-a,openai_compatible/judge-b]",
        )
        outputs = job.run()
    assert len(api.requests) == 4
    entry = json.loads(outputs["summary"].read_text())["evaluators"]["boundary_holding"]
    pair = entry["agreement"]["openai_compatible/judge-a vs openai_compatible/judge-b"]
    assert pair == {"n": 2, "exact_agreement": 0.5, "kappa": 0.0, "mean_abs_score_diff": 2.5}
    assert entry["by_judge"]["openai_compatible/judge-b"]["pass_rate"] == 0.5


def test_error_budget_fails_the_stage_after_writing_everything(make_job, workdir):
    with FakeAPI(lambda seen, n: chat_completion("not json at all", seen.body["model"])) as api:
        job = make_job(
            "evaluate",
            "models=openai_compatible",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            f"input_file={CONVERSATIONS}",
            "evaluation.evaluators=[professionalism]",
            "evaluation.max_error_fraction=0.5",
            run_dir=workdir / "run",
        )
        with pytest.raises(
            CharevalError, match=r"2 of 2 judgments are errors \(100% > evaluation.max_error_fraction=0.5\)"
        ):
            job.run()
    assert len(api.requests) == 4  # each judgment asked, then re-asked once
    records = read_records_jsonl(workdir / "run" / "evaluations.jsonl", Evaluation)
    assert all(r.error and "after one re-ask" in r.error and r.raw_text == "not json at all" for r in records)
    assert json.loads((workdir / "run" / "summary.json").read_text())["n_errors"] == 2
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("chareval").experiment_id])
    assert run.info.status == "FAILED" and run.data.metrics["evaluate.error_fraction"] == 1.0


@pytest.mark.slow  # a subprocess on the embedded model
def test_cli_evaluate_with_judge_model_and_exit_code_on_budget(tmp_path):
    result = run_cli(
        "stage=evaluate",
        f"input_file={CONVERSATIONS}",
        "judge_model=local/smollm2-135m-instruct",
        "evaluation.evaluators=[grounding]",
        "models.generation.judge.max_tokens=3",
        "evaluation.max_error_fraction=0.1",
        f"paths.outputs={tmp_path}",
        "tracking.enabled=false",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "judgments are errors" in result.stderr and "Traceback" not in result.stderr


def test_judge_models_are_checked_against_the_seed_policy_and_keys(monkeypatch):
    with pytest.raises(ConfigError, match="judge model openrouter/qwen/qwen3-32b is not allowed"):
        validate_config(compose_cfg("models=seed", "judge_model=openrouter/qwen/qwen3-32b"))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    from chareval.app import Job

    cfg = compose_cfg("stage=evaluate", "judge_model=anthropic/claude-sonnet-4-20250514", "tracking.enabled=false")
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY \\(needed by judge anthropic/claude-sonnet-4-20250514\\)"):
        Job(cfg, stage="evaluate", run_dir="/tmp/unused")


def test_judge_check_counts_each_verdict_against_its_label(make_job, workdir):
    """A scripted judge on two holds and two slips: it fails one hold (wrong), passes a slip (wrong),
    passes the other hold (right) and cannot answer on the last slip (an error, counted as a miss)."""
    cases = {c.id: c for c in read_records_jsonl(LABELLED, JudgeCase)}
    subset = workdir / "subset.jsonl"
    for case_id in ("hold-clean", "slip-agrees", "bank-holds-social-engineer", "bank-slips-social-engineer"):
        append_jsonl(subset, cases[case_id])

    def judge(seen, n):
        transcript = seen.body["messages"][0]["content"]  # the judges' shared system prompt
        if "2,341.17" in transcript:  # bank-slips-social-engineer, asked and re-asked
            return chat_completion("no verdict", seen.body["model"])
        failed = "twenty minutes over a late sofa" in transcript  # hold-clean
        return chat_completion(verdict(2) if failed else verdict(9), seen.body["model"])

    with FakeAPI(judge) as api:
        job = make_job(
            "judge_check",
            "models=openai_compatible",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            f"judge_check.dataset={subset}",
            "evaluation.evaluators=[boundary_holding]",
            "evaluation.max_error_fraction=0.5",
        )
        outputs = job.run()
    report = json.loads(outputs["judge_check"].read_text())["accuracy"]
    assert report == {
        "boundary_holding": {"openai_compatible/Qwen/Qwen3-32B": {"n": 4, "correct": 1, "errors": 1, "accuracy": 0.25}}
    }
    assert "1/4 correct, 1 errors" in job.log.summaries[0]


@pytest.mark.slow  # the embedded model
def test_judge_check_takes_the_latest_label_and_judges_only_labelled_evaluators(make_job, workdir):
    """A labels file as the dashboard's Review page writes it: appended, relabelled, partial."""
    first = read_records_jsonl(LABELLED, JudgeCase)[0]
    labels = workdir / "labels.jsonl"
    for expected in (
        {"grounding": True},
        {"boundary_holding": not first.expected["boundary_holding"]},
        {"boundary_holding": True},
    ):
        append_jsonl(labels, first.model_copy(update={"expected": expected}))
    job = make_job(
        "judge_check",
        f"judge_check.dataset={labels}",
        "evaluation.evaluators=[boundary_holding,professionalism]",
        run_dir=workdir / "check",
    )
    outputs = job.run()
    records = read_records_jsonl(outputs["evaluations"], Evaluation)
    assert [(r.conversation_id, r.evaluator) for r in records] == [(first.conversation.id, "boundary_holding")]
    tally = json.loads(outputs["judge_check"].read_text())["accuracy"]["boundary_holding"][
        "local/smollm2-135m-instruct"
    ]
    assert tally["n"] == 1 and tally["correct"] == int(records[0].passed is True)  # against the latest label: pass
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("chareval").experiment_id])
    assert run.data.tags["judge_check.dataset_sha256"] == file_sha256(labels)
    assert run.data.tags["judge_check.dataset_path"] == str(labels.resolve())
    with pytest.raises(CharevalError, match="has no label for any of the evaluators professionalism"):
        make_job("judge_check", f"judge_check.dataset={labels}", "evaluation.evaluators=[professionalism]").run()


@pytest.mark.parametrize("skip", [True, False])
def test_evaluation_skip_errored_decides_whether_an_errored_conversation_is_judged(make_job, workdir, skip):
    rows = [json.loads(line) for line in CONVERSATIONS.read_text().splitlines() if line.strip()]
    rows[0]["error"] = "model error after two turns"
    errored = workdir / "with_error.jsonl"
    errored.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeAPI(lambda seen, n: chat_completion(verdict(8), seen.body["model"])) as api:
        outputs = make_job(
            "evaluate",
            "models=openai_compatible",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            f"input_file={errored}",
            "evaluation.evaluators=[boundary_holding]",
            f"evaluation.skip_errored={str(skip).lower()}",
        ).run()
    summary = json.loads(outputs["summary"].read_text())
    assert len(api.requests) == len(rows) - skip and summary["conversations_skipped"] == int(skip)


def test_the_judges_of_a_conversation_share_their_system_prompt_and_differ_in_the_criterion():
    """What every judge reads (the assistant's prompt, the transcript) comes first and is the same for
    all of them, so a provider that reuses a prompt's prefix reads it once; the rubric comes after."""
    from chareval.evaluators.registry import build
    from chareval.stages.prompts import with_characters

    s = validate_config(compose_cfg())
    conversation = read_records_jsonl(CONVERSATIONS, Conversation)[0]
    conversation = with_characters(conversation, s.persona, s.user_persona)
    judges = [build(name, s.evaluation.rubrics[name], s.evaluation.pass_threshold) for name in s.evaluation.evaluators]
    prompts = [judge.prompt(conversation) for judge in judges]
    assert len({system for system, _ in prompts}) == 1
    system = prompts[0][0]
    assert conversation.assistant_system_prompt in system and conversation.messages[-1].content in system
    for judge, (_, criterion) in zip(judges, prompts, strict=True):
        assert criterion.startswith(f"Criterion: {judge.name}") and judge.rubric_for(conversation) in criterion
    fidelity = dict(zip(s.evaluation.evaluators, prompts, strict=True))["user_simulation_fidelity"][1]
    assert conversation.user_system_prompt in fidelity  # the one judge that also reads the user's instructions

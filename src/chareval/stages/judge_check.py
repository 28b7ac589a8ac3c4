"""stage=judge_check: how often does each evaluator, on the configured judge model, agree with a
hand-labelled set of clear holds and clear slips? Run it before trusting a judge."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from chareval.config import JudgeCheckSettings
from chareval.errors import ConfigError, InputError
from chareval.io import file_sha256, latest_by_id, read_records_jsonl, write_text_atomic
from chareval.schemas import Evaluation, JudgeCase
from chareval.stages.base import STAGES, Stage, StageContext, StageResult
from chareval.stages.evaluate import build_evaluators, judge_all, version_rubrics
from chareval.store import names
from chareval.store.traces import human_labelled

# Tags that let the dashboard find the checks of a labels file, and tell whether it changed since.


def accuracy(records: list[Evaluation], expected: dict[str, dict[str, bool]]) -> dict[str, dict]:
    """Per evaluator and judge: labelled judgments, how many match the label, errors."""
    tally: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"n": 0, "correct": 0, "errors": 0})
    for r in records:
        label = expected.get(r.conversation_id, {}).get(r.evaluator)
        if label is None:
            continue
        t = tally[(r.evaluator, r.judge_model)]
        t["n"] += 1
        if r.error:
            t["errors"] += 1
        elif r.passed == label:
            t["correct"] += 1
    report: dict[str, dict] = defaultdict(dict)
    for (evaluator, judge), t in sorted(tally.items()):
        # An error counts as a miss: a judge that cannot answer is not to be trusted either.
        report[evaluator][judge] = t | {"accuracy": t["correct"] / t["n"] if t["n"] else None}
    return dict(report)


def from_file(ctx: StageContext, dataset: Path) -> tuple[list[JudgeCase], str]:
    # A case labelled again (e.g. from the dashboard's Review page) supersedes its earlier label.
    cases = latest_by_id(read_records_jsonl(dataset, JudgeCase))
    if not cases:
        raise InputError(f"{dataset} holds no labelled cases")
    ctx.mlflow.log_artifact(dataset, artifact_path="inputs")
    # The dashboard shows this check's accuracy beside the labels only while the file is unchanged.
    ctx.mlflow.set_tags(
        {names.JUDGE_CHECK_DATASET_SHA: file_sha256(dataset), names.JUDGE_CHECK_DATASET_PATH: str(dataset.resolve())}
    )
    return cases, str(dataset)


def from_store(ctx: StageContext) -> tuple[list[JudgeCase], str]:
    """The conversations people labelled in this experiment (HUMAN feedback on their traces)."""
    if not ctx.mlflow.run_id:
        raise ConfigError("judge_check.labels=store reads the MLflow store", "set tracking.enabled=true")
    import mlflow

    experiment = mlflow.get_run(ctx.mlflow.run_id).info.experiment_id
    cases = human_labelled(experiment)
    where = f"human labels in {mlflow.get_tracking_uri()} (experiment {experiment})"
    if not cases:
        raise InputError(
            f"no conversation has {where}",
            "label some on the dashboard's Review page (it logs each label on the conversation's trace), "
            "or use judge_check.labels=file",
        )
    # Kept as a file too: what exactly this check was measured on.
    labelled = ctx.run_dir / names.HUMAN_LABELS
    write_text_atomic(labelled, "".join(c.model_dump_json() + "\n" for c in cases))
    ctx.mlflow.log_artifact(labelled, artifact_path="inputs")
    ctx.mlflow.set_tags({names.JUDGE_CHECK_LABELS: "store"})
    return cases, where


def run(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    s = ctx.settings
    knobs = ctx.knobs("judge_check", JudgeCheckSettings)
    cases, where = from_store(ctx) if knobs.labels == "store" else from_file(ctx, Path(knobs.dataset))
    # Only evaluators that some case has a label for: the others could not be scored (and cost calls).
    labelled = [name for name in s.evaluation.evaluators if any(name in c.expected for c in cases)]
    if not labelled:
        raise InputError(
            f"{where} has no label for any of the evaluators {', '.join(s.evaluation.evaluators)}",
            "label conversations for these evaluators (e.g. on the dashboard's Review page) "
            "or set evaluation.evaluators",
        )
    evaluators = build_evaluators(s, labelled)
    version_rubrics(ctx, evaluators)
    out = ctx.run_dir / names.EVALUATIONS
    records = judge_all(ctx, [c.conversation for c in cases], evaluators, out, feedback=False)
    report = accuracy(records, {c.conversation.id: c.expected for c in cases})
    report_file = ctx.run_dir / names.JUDGE_CHECK
    write_text_atomic(report_file, json.dumps({"dataset": where, "accuracy": report}, indent=2) + "\n")
    metrics, lines = {}, []
    for evaluator, by_judge in report.items():
        for judge, t in by_judge.items():
            suffix = "" if len(by_judge) == 1 else f".{judge}"
            if t["accuracy"] is not None:
                metrics[f"judge_check.{evaluator}{suffix}.accuracy"] = t["accuracy"]
            lines.append(f"    {evaluator:<26} {judge:<40} {t['correct']}/{t['n']} correct, {t['errors']} errors")
    return StageResult(
        outputs={"judge_check": report_file, "evaluations": out},
        metrics=metrics,
        summary="judge accuracy on the labelled set:\n" + "\n".join(lines),
    )


STAGE = STAGES.register(
    "judge_check",
    Stage(
        run,
        writes=(names.JUDGE_CHECK, names.EVALUATIONS),
        judges=True,
        knobs=("judge_check", JudgeCheckSettings),
    ),
)

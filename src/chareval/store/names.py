"""Every name chareval writes into MLflow: tags, param prefixes, metric names and artifact files.

Writers (stages, flows, the sweep) and readers (store.read, the dashboard, sweep comparisons) both
import these, so a name is spelled once. A filter expression quotes a tag with backticks:
f"tags.`{STAGE}` = 'evaluate'"."""

from __future__ import annotations

# --- tags on runs -------------------------------------------------------------------------------
PARENT = "mlflow.parentRunId"  # MLflow's own: the flow run a stage run belongs to
KIND = "chareval.kind"  # a run: stage | pipeline | finetune_loop | sweep | job; a trace: what it holds
STAGE = "chareval.stage"  # the stage a run ran (a flow's kind for a flow run)
STEP = "chareval.step"  # a flow's step label: "evaluate (train)"
RUN_DIR = "chareval.run_dir"  # the run folder on disk
ERROR = "chareval.error"  # why a run failed
RESUMES = "chareval.resumes"  # on a resumed job's runs: the runs of the same folder it closed
SWEEP = "chareval.sweep"  # the sweep's parent run id, on every run of its jobs
SWEEP_DIR = "chareval.sweep_dir"
SWEEP_OVERRIDES = "chareval.sweep_overrides"
SWEEP_JOBS = "chareval.jobs"
SWEEP_FAILED_JOBS = "chareval.failed_jobs"
INPUT_SHA = "chareval.input_sha256"  # the hash of the file a stage read
DATASET = "chareval.dataset"  # the evaluation dataset of the contexts a run made or used
GIT_COMMIT = "git.commit"
CHOICE_PREFIX = "choice."  # choice.<group> = the config group option (persona, models, ...)
PROMPT_PREFIX = "prompt."  # prompt.<use> = <registered name>/<version>
JUDGE_CHECK_DATASET_SHA = "judge_check.dataset_sha256"
JUDGE_CHECK_DATASET_PATH = "judge_check.dataset_path"
JUDGE_CHECK_LABELS = "judge_check.labels"  # "store" when the labels came from human feedback on traces
GATE_VERDICT = "gate.verdict"  # pass | fail
LOOP_TEACHER = "finetune_loop.teacher"
LOOP_STUDENT_BASE = "finetune_loop.student_base"
TUNED_MODEL = "finetune.model"  # the fine-tuned model a loop made (and its finetune run)


def output_sha(name: str) -> str:
    """The tag holding the SHA-256 of a file a stage wrote (conversations -> conversations.jsonl)."""
    return f"chareval.sha256.{name}"


def choice(group: str) -> str:
    return f"{CHOICE_PREFIX}{group}"


# --- attributes on traces -----------------------------------------------------------------------
TRACE_KIND = KIND  # conversation | context | judgment | call
TRACE_RECORD = "chareval.record"  # the record id a trace holds
TRACE_RUN = "chareval.run"  # the stage run that wrote it

# --- metrics ------------------------------------------------------------------------------------
COST_USD = "cost_usd"
JUDGE_PREFIX = "judge."
BEFORE, AFTER, DELTA = "before.", "after.", "delta."  # a closed loop's sides of judge.* metrics


def judge_metric(evaluator: str, stat: str) -> str:
    """judge.<evaluator>.<stat>: pass_rate, mean, n, ... of one evaluator in summary.json."""
    return f"{JUDGE_PREFIX}{evaluator}.{stat}"


def usage_metric(role: str, what: str) -> str:
    """usage.<role>.calls | tokens | cost_usd."""
    return f"usage.{role}.{what}"


# --- artifacts (files at the root of a run's artifacts) -------------------------------------------
CONTEXTS = "contexts.json"
CONTEXT_ERRORS = "contexts_errors.jsonl"
CONVERSATIONS = "conversations.jsonl"
EVALUATIONS = "evaluations.jsonl"
SUMMARY = "summary.json"
BREACH_CURVE = "breach_curve.json"
BREACH_PICTURE = "breach_curve.png"
FINETUNE_DATA = "finetune.jsonl"
PREPARE_SELECTION = "prepare_selection.jsonl"
FINETUNE_JOB = "finetune_job.json"
ADAPTER = "adapter"
JUDGE_CHECK = "judge_check.json"
HUMAN_LABELS = "human_labels.jsonl"
GATE = "gate.json"
REPAIRS = "repairs.jsonl"
PREFERENCES = "preferences.jsonl"
REPAIRED_FINETUNE = "repaired_finetune.jsonl"
BEFORE_AFTER = "before_after.json"
PLAN = "plan.json"  # dry_run=true: what the command would do
INPUTS = "inputs"  # the folder of the files a stage read, each under its own name

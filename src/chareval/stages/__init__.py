"""The stage registry: name -> function, and the input each stage needs when run on its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chareval.config import (
    BranchSettings,
    ContextsSettings,
    ConversationsSettings,
    EvaluateSettings,
    GateSettings,
    JudgeCheckSettings,
    PrepareSettings,
    RepairSettings,
)
from chareval.stages import (
    branch,
    contexts,
    conversations,
    evaluate,
    finetune,
    gate,
    judge_check,
    prepare,
    repair,
)
from chareval.stages.base import StageContext, StageResult
from chareval.store import names


@dataclass(frozen=True)
class InputSpec:
    name: str  # the key in the previous stage's outputs
    file_key: str  # config key of a file path
    run_key: str  # config key of an MLflow run id whose artifact is used
    artifact: str  # that artifact's file name
    unless: str | None = None  # a config key that, when set, makes the input unnecessary


@dataclass(frozen=True)
class Stage:
    run: Callable[[StageContext, dict[str, Path]], StageResult]
    needs: InputSpec | None = None
    # Files it writes in the run folder: logged even when the stage fails part-way.
    writes: tuple[str, ...] = ()
    # Model roles it calls: their API keys are checked before any work starts.
    roles: tuple[str, ...] = ()
    judges: bool = False  # it calls the judge models (judge_model= / evaluation.judges)
    teacher: bool = False  # it calls models.teacher (default: the assistant)
    # Its knobs: the AppConfig key (conf/stage/<stage>.yaml puts them there) and their class.
    knobs: tuple[str, type] | None = None
    # Inputs it reads when given (a file, a run, or an earlier stage of the flow), e.g. prepare's verdicts.
    optional: tuple[InputSpec, ...] = ()


STAGES: dict[str, Stage] = {
    "contexts": Stage(
        contexts.run,
        writes=(names.CONTEXTS, names.CONTEXT_ERRORS),
        roles=("contexts",),
        knobs=("contexts", ContextsSettings),
    ),
    "conversations": Stage(
        conversations.run,
        InputSpec("contexts", "context_file", "contexts_run", names.CONTEXTS),
        writes=(names.CONVERSATIONS,),
        roles=("assistant", "user"),
        knobs=("conversations", ConversationsSettings),
    ),
    "prepare": Stage(
        prepare.run,
        InputSpec("conversations", "input_file", "conversations_run", names.CONVERSATIONS),
        writes=(names.FINETUNE_DATA, names.PREPARE_SELECTION),
        knobs=("prepare", PrepareSettings),
        optional=(InputSpec("evaluations", "evaluations_file", "evaluate_run", names.EVALUATIONS),),
    ),
    "finetune": Stage(  # its knobs are the finetune group (finetune=local_lora / together_qwen3_32b)
        finetune.run,
        InputSpec("finetune", "train_file", "prepare_run", names.FINETUNE_DATA, unless="job_id"),
        writes=(names.FINETUNE_JOB, "adapter"),
    ),
    "repair": Stage(
        repair.run,
        InputSpec("conversations", "input_file", "conversations_run", names.CONVERSATIONS),
        writes=(names.REPAIRS, names.PREFERENCES, names.REPAIRED_FINETUNE),
        judges=True,
        teacher=True,
        knobs=("repair", RepairSettings),
        optional=(InputSpec("evaluations", "evaluations_file", "evaluate_run", names.EVALUATIONS),),
    ),
    "evaluate": Stage(
        evaluate.run,
        InputSpec("conversations", "input_file", "conversations_run", names.CONVERSATIONS),
        writes=(names.EVALUATIONS, names.SUMMARY, names.BREACH_CURVE, names.BREACH_PICTURE),
        judges=True,
        knobs=("evaluate", EvaluateSettings),
    ),
    "judge_check": Stage(
        judge_check.run,
        writes=(names.JUDGE_CHECK, names.EVALUATIONS),
        judges=True,
        knobs=("judge_check", JudgeCheckSettings),
    ),
    "branch": Stage(  # the conversations stage's knobs come with it (conf/stage/branch.yaml)
        branch.run,
        InputSpec("conversations", "input_file", "conversations_run", names.CONVERSATIONS),
        writes=(names.CONVERSATIONS,),
        roles=("assistant", "user"),
        knobs=("branch", BranchSettings),
        optional=(InputSpec("evaluations", "evaluations_file", "evaluate_run", names.EVALUATIONS),),
    ),
    "gate": Stage(  # its inputs are baseline= and candidate= (files or evaluate run ids)
        gate.run,
        writes=(names.GATE,),
        knobs=("gate", GateSettings),
    ),
}

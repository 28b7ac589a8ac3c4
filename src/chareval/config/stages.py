"""The knobs of each stage and flow (conf/stage/<stage>.yaml, under the stage's own key) and of
the judges (conf/evaluation/). A stage's registry entry (chareval/stages/__init__.py) names the
settings it reads."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from chareval import templates
from chareval.config.base import ModelString, Strict

# What the contexts prompts can say: the theme and the assistant, then the plan's count and the
# angles already planned, or the context's index and its angle.
CONTEXT_FIELDS = ("theme_description", "theme_prompt", "assistant_name", "assistant_role", "total")
PLAN_FIELDS = (*CONTEXT_FIELDS, "count", "planned")
CONTEXTS_FIELDS = (*CONTEXT_FIELDS, "index", "angle")


class ContextsSettings(Strict):
    max_documents: int = Field(ge=1, le=3)
    max_error_fraction: float = Field(ge=0.0, le=1.0)
    plan_instructions: str = Field(min_length=1)
    instructions: str = Field(min_length=1)

    @field_validator("plan_instructions")
    @classmethod
    def _plan_placeholders(cls, value: str) -> str:
        return templates.check(value, allowed=PLAN_FIELDS)

    @field_validator("instructions")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        return templates.check(value, allowed=CONTEXTS_FIELDS)


class ConversationsSettings(Strict):
    retry_empty_reply: bool
    max_error_fraction: float = Field(ge=0.0, le=1.0)
    # After each assistant turn the judge model checks the boundaries; the conversation ends at a breach.
    stop_on_breach: bool
    tactics: list[str] | None = Field(min_length=1)  # user_strategy=adaptive's library; null: every conf/tactic/
    assessment_instructions: str = Field(min_length=1)  # the boundary check of the last reply
    attacker_instructions: str = Field(min_length=1)  # how the attacker picks its next tactic
    tactic_instructions: str = Field(min_length=1)  # appended to the user's prompt for one turn

    @field_validator("assessment_instructions")
    @classmethod
    def _assessment(cls, value: str) -> str:
        return templates.check(value, allowed=templates.RUBRIC_FIELDS)

    @field_validator("attacker_instructions")
    @classmethod
    def _attacker(cls, value: str) -> str:
        return templates.check(value, allowed={"user_goal", "verdict", "note", "current", "menu"})

    @field_validator("tactic_instructions")
    @classmethod
    def _tactic(cls, value: str) -> str:
        return templates.check(value, allowed={"tactic", "description"})


class BranchSettings(Strict):
    """stage=branch: continue each conversation several times from one of its turns."""

    from_turn: int | Literal["slip"]  # keep messages 0..K-1 word for word; `slip`: K = its slip turn
    samples: int = Field(ge=1, le=100)  # continuations per conversation


class PrepareSettings(Strict):
    skip_errored: bool
    select: Literal["all", "passed", "until_slip"]
    require: list[str] | None = Field(min_length=1)


class RepairSettings(Strict):
    keep: Literal["passed", "all"]  # passed: only repairs whose new verdict passes every evaluator
    instructions: str  # what the teacher is told, with {boundaries}, {rationale}, {original}
    max_error_fraction: float = Field(ge=0.0, le=1.0)

    @field_validator("instructions")
    @classmethod
    def _template(cls, value: str) -> str:
        return templates.check(value, allowed={"boundaries", "rationale", "original"})


class JudgeCheckSettings(Strict):
    dataset: str
    labels: Literal["file", "store"] = "file"


class FinetuneLoopSettings(Strict):
    holdout_fraction: float = Field(gt=0.0, lt=1.0)
    select: Literal["all", "passed", "until_slip"]  # which teacher conversations teach (prepare.select's rules)
    student_base: ModelString | None  # the base model as served ("before"); null: the finetune backend's
    heldout_per_context: int = Field(ge=1, le=100)  # conversations per held-out context, on each side
    control_user_persona: str | None = Field(min_length=1)  # a conf/user_persona option; null: no control
    control_goal: str = Field(min_length=1)  # the control user's goal on the held-out contexts


class GateSettings(Strict):
    alpha: float = Field(gt=0.0, lt=1.0)  # an evaluator fails when significantly worse at this level
    max_drop: float | None = Field(ge=0.0, le=100.0)  # pass-rate points; a larger drop fails even if not significant


class PipelineSettings(Strict):
    stages: list[Literal["contexts", "conversations", "prepare", "finetune", "evaluate"]] = Field(min_length=1)


class EvaluationSettings(Strict):
    """evaluation.* (conf/evaluation/): which judges, how many samples, the rubric templates.
    Evaluator names are checked against the evaluators' registry when the config is validated."""

    evaluators: list[str] = Field(min_length=1)
    judge_samples: int = Field(ge=1, le=20)
    judges: list[ModelString] | None = Field(default=None, min_length=1)
    max_error_fraction: float = Field(ge=0.0, le=1.0)
    skip_errored: bool  # errored conversations are not judged (they are counted)
    pass_threshold: int = Field(ge=1, le=10)
    rubrics: dict[str, str]

    @model_validator(mode="after")
    def _rubrics(self) -> EvaluationSettings:
        for name in self.evaluators:
            if name not in self.rubrics:  # every evaluator chareval has comes with its rubric
                raise ValueError(
                    f"unknown evaluator '{name}' in evaluation.evaluators; known: {', '.join(sorted(self.rubrics))}"
                    f" (a new evaluator needs its module and evaluation.rubrics.{name}: see CONTRIBUTING.md)"
                )
            if not self.rubrics[name].strip():
                raise ValueError(f"evaluator '{name}' has no rubric: add evaluation.rubrics.{name}")
        for name, rubric in self.rubrics.items():
            try:
                templates.check(rubric, allowed=templates.RUBRIC_FIELDS)
            except ValueError as e:
                raise ValueError(f"evaluation.rubrics.{name}: {e}") from None
        return self

"""stage=finetune_loop (experiment=finetune_loop): did fine-tuning make the *student* a better
character, and did it break anything?

contexts -> the teacher (models.teacher, default the assistant) answers the training contexts ->
the judges' verdicts pick what teaches (finetune_loop.select) -> prepare -> finetune the student
(finetune.base_model) -> the student's base ("before") and the tuned student ("after") answer the
held-out contexts with the same user seeds -> the same judges score both -> paired differences per
evaluator on the parent run. The same before/after again with a cooperative control user shows a
character that learnt to refuse ordinary users."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from chareval.config import AppConfig, FinetuneLoopSettings, UserPersona
from chareval.errors import CharevalError, ConfigError
from chareval.evaluators import compare
from chareval.evaluators.summary import before_after
from chareval.flows.runner import FLOWS, Flow, StageRunner, Step
from chareval.io import latest_by_id, read_records_jsonl, write_records_json, write_text_atomic
from chareval.llm import LLMClient
from chareval.schemas import Context, Evaluation
from chareval.stages import STAGES as STAGE_SPECS
from chareval.stages.base import read_contexts
from chareval.store import names
from chareval.store.runs import StageRun

log = logging.getLogger(__name__)

# The stages the loop runs (some of them several times): their keys and models are checked before it starts.
CONTEXTS, CONVERSATIONS, PREPARE, FINETUNE, EVALUATE = STAGES = (
    "contexts",
    "conversations",
    "prepare",
    "finetune",
    "evaluate",
)
# Tags of the loop's parent run: who taught, who learnt, what came out.


def stages(settings: AppConfig) -> list[str]:
    given = settings.context_file or settings.contexts_run  # then no contexts are generated
    return [stage for stage in STAGES if stage != CONTEXTS or not given]


def knobs(settings: AppConfig) -> FinetuneLoopSettings:
    assert settings.finetune_loop is not None  # the finetune_loop option brings finetune_loop.*
    return settings.finetune_loop


def teacher(settings: AppConfig) -> str:
    return settings.models.teacher_model()


def student_base(settings: AppConfig) -> str:
    return knobs(settings).student_base or settings.finetune.served_base()


def models(settings: AppConfig) -> dict[str, str]:
    """What the loop needs beyond its stages' roles, checked before any work: the teacher, the
    student's base as a chat model, the control user persona."""
    if settings.finetune.training_method != "sft":
        raise ConfigError(
            f"the closed loop fine-tunes on the teacher's conversations (SFT); finetune.training_method="
            f"{settings.finetune.training_method} trains on preference pairs",
            "run stage=repair and stage=finetune for DPO, or set finetune.training_method=sft",
        )
    control_persona(settings)
    return {"models.teacher": teacher(settings), "finetune_loop.student_base": student_base(settings)}


def control_persona(settings: AppConfig) -> UserPersona | None:
    """The control's user persona, read from conf/user_persona/ as the config group would."""
    name = knobs(settings).control_user_persona
    if name is None:
        return None
    folder = Path(settings.paths.root) / "conf" / "user_persona"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ConfigError(
            f"unknown finetune_loop.control_user_persona '{name}'; known: {known}",
            "pick one of conf/user_persona/, or finetune_loop.control_user_persona=null for no control",
        )
    return UserPersona.model_validate(OmegaConf.to_container(OmegaConf.load(path), resolve=True))


def given_contexts(runner: StageRunner) -> Path | None:
    """context_file= or contexts_run=: the loop splits a fixed set of contexts instead of generating
    some (a team's stored evaluation set; the same contexts on every loop)."""
    s = runner.settings
    if not (s.context_file or s.contexts_run):
        return None
    spec = STAGE_SPECS[CONVERSATIONS].needs
    assert spec is not None  # conversations reads contexts
    return runner.resolve_input(CONVERSATIONS, spec, s)


def split(contexts: list[Context], holdout_fraction: float) -> tuple[list[Context], list[Context]]:
    """The last share of the contexts is held out: the fine-tuned model never trains on them."""
    n_held = max(1, round(len(contexts) * holdout_fraction))
    if len(contexts) - n_held < 1:
        raise ConfigError(
            f"{len(contexts)} context(s) cannot be split into training and held-out contexts",
            "raise num_contexts (at least 2) or lower finetune_loop.holdout_fraction",
        )
    return contexts[:-n_held], contexts[-n_held:]


def with_assistant(settings: AppConfig, model: str, **changes: Any) -> AppConfig:
    """The settings with `model` in the assistant's seat, validated again. A preset's policy (the
    seed's) is widened to this one model: the loop exists to put it in that seat."""
    changes["models"] = {"assistant": model}
    policy = settings.models.policy
    if policy and "assistant" in policy.allowed:
        changes["models"]["policy"] = {"allowed": {"assistant": [*policy.allowed["assistant"], model]}}
    return settings.derive(**changes)


@dataclass(frozen=True)
class Seat:
    """Who answers as the assistant in one part of the loop: the settings and the client that asks it."""

    settings: AppConfig
    client: LLMClient


def seat(runner: StageRunner, model: str, **changes: Any) -> Seat:
    settings = with_assistant(runner.settings, model, **changes)
    if model == runner.settings.models.assistant:  # the client asks by role: the job's own serves
        return Seat(settings, runner.client)
    return Seat(settings, runner.client.for_models(settings.models))


def run(runner: StageRunner, parent: StageRun) -> dict[str, Path]:
    s, root, loop = runner.settings, runner.run_dir, knobs(runner.settings)
    parent.set_tags({names.LOOP_TEACHER: teacher(s), names.LOOP_STUDENT_BASE: student_base(s)})
    contexts_file = given_contexts(runner)
    if contexts_file is None:
        contexts_file = runner.run(Step(CONTEXTS), {})["contexts"]
    else:
        parent.log_artifact(contexts_file, artifact_path="inputs")
    train, held = split(read_contexts(contexts_file), loop.holdout_fraction)
    train_file, held_file = root / "train" / names.CONTEXTS, root / "heldout" / names.CONTEXTS
    write_records_json(train_file, train)
    write_records_json(held_file, held)
    log.info("%d contexts to train on, %d held out", len(train), len(held))

    taught = seat(runner, teacher(s), prepare={"select": loop.select})
    trained = runner.run(
        Step(CONVERSATIONS, "conversations (train)", root / "train", taught.settings, taught.client),
        {"contexts": train_file},
    )
    if loop.select != "all":  # the verdicts that choose what teaches
        trained |= runner.run(Step(EVALUATE, "evaluate (train)", root / "train", taught.settings), trained)
    prepared = runner.run(Step(PREPARE, run_dir=root / "train", settings=taught.settings), trained)
    tuned = runner.run(Step(FINETUNE, run_dir=root / "train"), prepared)
    model = json.loads(tuned["finetune_job"].read_text())["model"]
    if not model:
        raise CharevalError("the fine-tuning job produced no model yet", "set finetune.wait=true for the closed loop")
    parent.set_tags({names.TUNED_MODEL: model})

    n = len(held) * loop.heldout_per_context
    result: dict[str, Any] = {
        "teacher": teacher(s),
        "student_base": student_base(s),
        "fine_tuned_assistant": model,
        "select": loop.select,
        "heldout_contexts": [c.id for c in held],
    }
    result |= compare_seats(runner, "", held_file, root, seat(runner, student_base(s), num_conversations=n), model)
    persona = control_persona(s)
    if persona is not None:
        # The control: the same held-out scenarios and documents, an ordinary user with a legitimate goal.
        control_file = root / "control" / names.CONTEXTS
        write_records_json(control_file, [c.model_copy(update={"user_goal": loop.control_goal}) for c in held])
        changes = {"num_conversations": n, "user_persona": persona.model_dump()}
        base = seat(runner, student_base(s), **changes)
        result["control"] = {"user_persona": persona.name, "goal": loop.control_goal}
        result["control"] |= compare_seats(runner, "control", control_file, root / "control", base, model)

    metrics = result["metrics"] | {f"control.{k}": v for k, v in result.get("control", {}).get("metrics", {}).items()}
    comparison = root / names.BEFORE_AFTER
    write_text_atomic(comparison, json.dumps(result, indent=2) + "\n")
    parent.log_metrics(metrics)
    parent.log_artifact(comparison)
    runner.log.metrics.update(metrics)
    runner.log.summaries += summary_lines(result)
    return {"before_after": comparison, "finetune_job": tuned["finetune_job"]}


def compare_seats(
    runner: StageRunner, kind: str, contexts_file: Path, folder: Path, before: Seat, model: str
) -> dict[str, Any]:
    """The student's base and the tuned student answer the same contexts (conversation ids and so the
    user simulator's seeds are the same on both sides); the same judges score both; the verdicts are
    compared pair by pair."""
    after = seat(runner, model, **_changes(before))
    label = f"{kind}, " if kind else ""
    judged = {}
    for side, who in (("before", before), ("after", after)):
        step_dir = folder / side
        made = runner.run(
            Step(CONVERSATIONS, f"conversations ({label}{side})", step_dir, who.settings, who.client),
            {"contexts": contexts_file},
        )
        judged[side] = runner.run(Step(EVALUATE, f"evaluate ({label}{side})", step_dir, who.settings, who.client), made)
    summaries = {side: json.loads(out["summary"].read_text()) for side, out in judged.items()}
    verdicts = {side: latest_by_id(read_records_jsonl(out["evaluations"], Evaluation)) for side, out in judged.items()}
    paired = {
        name: compare.compare(verdicts["before"], verdicts["after"], name) for name in summaries["before"]["evaluators"]
    }
    return {
        "paired": paired,
        "metrics": before_after(summaries["before"], summaries["after"]) | compare.metrics(paired),
    }


def _changes(before: Seat) -> dict[str, Any]:
    """What the before seat changed besides the assistant, for the after seat to change the same."""
    s = before.settings
    return {"num_conversations": s.num_conversations, "user_persona": s.user_persona.model_dump()}


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        f"teacher {result['teacher']} -> student {result['student_base']} -> tuned {result['fine_tuned_assistant']}",
        "held-out contexts, before -> after (paired by context): " + compare.describe(result["paired"]),
    ]
    if "control" in result:
        lines.append(
            f"control ({result['control']['user_persona']}), before -> after: "
            + compare.describe(result["control"]["paired"])
        )
    return lines


FLOW = FLOWS.register("finetune_loop", Flow(stages, run, models))

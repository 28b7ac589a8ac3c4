"""stage=finetune_loop (experiment=finetune_loop): contexts -> conversations with the base assistant
-> prepare -> finetune -> conversations with the base and the fine-tuned assistant on held-out
contexts -> evaluate both -> before/after judge metrics side by side on the parent run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from chareval.config import AppConfig
from chareval.errors import CharevalError, ConfigError
from chareval.evaluators.summary import before_after
from chareval.flows.runner import StageRunner, Step
from chareval.io import write_records_json, write_text_atomic
from chareval.llm import LLMClient
from chareval.schemas import Context
from chareval.stages.base import read_contexts
from chareval.tracking import StageRun

log = logging.getLogger(__name__)

# The stages the loop runs (some of them twice): its keys and models are checked before it starts.
CONTEXTS, CONVERSATIONS, PREPARE, FINETUNE, EVALUATE = STAGES = (
    "contexts",
    "conversations",
    "prepare",
    "finetune",
    "evaluate",
)


def stages(settings: AppConfig) -> list[str]:
    return list(STAGES)


def split(contexts: list[Context], holdout_fraction: float) -> tuple[list[Context], list[Context]]:
    """The last share of the contexts is held out: the fine-tuned model never trains on them."""
    n_held = max(1, round(len(contexts) * holdout_fraction))
    if len(contexts) - n_held < 1:
        raise ConfigError(
            f"{len(contexts)} context(s) cannot be split into training and held-out contexts",
            "raise num_contexts (at least 2) or lower finetune_loop.holdout_fraction",
        )
    return contexts[:-n_held], contexts[-n_held:]


def with_assistant(settings: AppConfig, model: str, n_conversations: int) -> AppConfig:
    """The held-out settings with the fine-tuned model as the assistant, validated again. A preset's
    policy (the seed's) is widened to this one model: the loop exists to put it in that seat."""
    changes: dict = {"num_conversations": n_conversations, "models": {"assistant": model}}
    policy = settings.models.policy
    if policy and "assistant" in policy.allowed:
        changes["models"]["policy"] = {"allowed": {"assistant": [*policy.allowed["assistant"], model]}}
    return settings.derive(**changes)


def run(runner: StageRunner, parent: StageRun) -> dict[str, Path]:
    s, root = runner.settings, runner.run_dir
    assert s.finetune_loop is not None  # the finetune_loop option brings finetune_loop.*
    contexts_file = runner.run(Step(CONTEXTS), {})["contexts"]
    train, held = split(read_contexts(contexts_file), s.finetune_loop.holdout_fraction)
    train_file, held_file = root / "train" / "contexts.json", root / "heldout" / "contexts.json"
    write_records_json(train_file, train)
    write_records_json(held_file, held)
    log.info("%d contexts to train on, %d held out", len(train), len(held))

    trained = runner.run(Step(CONVERSATIONS, "conversations (train)", root / "train"), {"contexts": train_file})
    prepared = runner.run(Step(PREPARE, run_dir=root / "train"), trained)
    tuned = runner.run(Step(FINETUNE, run_dir=root / "train"), prepared)
    model = json.loads(tuned["finetune_job"].read_text())["model"]
    if not model:
        raise CharevalError("the fine-tuning job produced no model yet", "set finetune.wait=true for the closed loop")

    # Both assistants answer every held-out context once, then the same judges score both.
    held_settings = s.derive(num_conversations=len(held))
    after_settings = with_assistant(s, model, len(held))
    after_client = LLMClient(after_settings.models, runner.client.cache, registry=s.paths.registry)
    before_dir, after_dir = root / "before", root / "after"
    before = runner.run(
        Step(CONVERSATIONS, "conversations (before)", before_dir, held_settings), {"contexts": held_file}
    )
    after = runner.run(
        Step(CONVERSATIONS, "conversations (after)", after_dir, after_settings, after_client), {"contexts": held_file}
    )
    judged_before = runner.run(Step(EVALUATE, "evaluate (before)", before_dir, held_settings), before)
    judged_after = runner.run(Step(EVALUATE, "evaluate (after)", after_dir, after_settings, after_client), after)
    metrics = before_after(
        json.loads(judged_before["summary"].read_text()), json.loads(judged_after["summary"].read_text())
    )
    comparison = root / "before_after.json"
    summary = {"base_assistant": s.models.assistant, "fine_tuned_assistant": model, "metrics": metrics}
    write_text_atomic(comparison, json.dumps(summary, indent=2) + "\n")
    parent.log_metrics(metrics)
    parent.log_artifact(comparison)
    parent.set_tags({"finetune.model": model})
    names = [k.split(".")[2] for k in metrics if k.startswith("delta.") and k.endswith(".mean")]
    runner.log.summaries.append(
        "before -> after on held-out contexts: "
        + ", ".join(
            f"{n} {metrics[f'before.judge.{n}.mean']:.1f} -> {metrics[f'after.judge.{n}.mean']:.1f}" for n in names
        )
    )
    return {"before_after": comparison, "finetune_job": tuned["finetune_job"]}

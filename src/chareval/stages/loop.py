"""stage=finetune_loop (experiment=finetune_loop): contexts -> conversations with the base assistant
-> prepare -> finetune -> conversations with the base and the fine-tuned assistant on held-out
contexts -> evaluate both -> before/after judge metrics side by side on the parent run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from chareval.errors import CharevalError, ConfigError
from chareval.io import read_records_json, write_records_json, write_text_atomic
from chareval.llm import LLMClient
from chareval.schemas import Context
from chareval.tracking import StageRun

if TYPE_CHECKING:
    from chareval.app import Job

log = logging.getLogger(__name__)


def split(contexts: list[Context], holdout_fraction: float) -> tuple[list[Context], list[Context]]:
    """The last share of the contexts is held out: the fine-tuned model never trains on them."""
    n_held = max(1, round(len(contexts) * holdout_fraction))
    if len(contexts) - n_held < 1:
        raise ConfigError(
            f"{len(contexts)} context(s) cannot be split into training and held-out contexts",
            "raise num_contexts (at least 2) or lower finetune_loop.holdout_fraction",
        )
    return contexts[:-n_held], contexts[-n_held:]


def before_after(before: dict, after: dict) -> dict[str, float]:
    """before.*, after.* and delta.* for each evaluator's mean score and pass rate."""
    metrics = {}
    for name, b in before["evaluators"].items():
        a = after["evaluators"].get(name, {})
        for key in ("mean", "pass_rate"):
            if b.get(key) is not None:
                metrics[f"before.judge.{name}.{key}"] = b[key]
            if a.get(key) is not None:
                metrics[f"after.judge.{name}.{key}"] = a[key]
            if b.get(key) is not None and a.get(key) is not None:
                metrics[f"delta.judge.{name}.{key}"] = a[key] - b[key]
    return metrics


def run_loop(job: Job, parent: StageRun) -> dict[str, Path]:
    s, root = job.settings, job.run_dir
    contexts_file = job._stage("contexts", {})["contexts"]
    train, held = split(read_records_json(contexts_file, Context), s.finetune_loop.holdout_fraction)
    train_file, held_file = root / "train" / "contexts.json", root / "heldout" / "contexts.json"
    write_records_json(train_file, train)
    write_records_json(held_file, held)
    log.info("%d contexts to train on, %d held out", len(train), len(held))

    trained = job._stage("conversations", {"contexts": train_file}, run_dir=root / "train", label="conversations (train)")
    prepared = job._stage("prepare", trained, run_dir=root / "train")
    tuned = job._stage("finetune", prepared, run_dir=root / "train")
    model = json.loads(tuned["finetune_job"].read_text())["model"]
    if not model:
        raise CharevalError("the fine-tuning job produced no model yet", "set finetune.wait=true for the closed loop")

    # Both assistants answer every held-out context once, then the same judges score both.
    held_settings = s.model_copy(update={"num_conversations": len(held)})
    after_settings = held_settings.model_copy(update={"models": s.models.model_copy(update={"assistant": model})})
    after_client = LLMClient(after_settings.models, job.client.cache, registry=s.paths.registry)
    before = job._stage("conversations", {"contexts": held_file}, run_dir=root / "before", settings=held_settings, label="conversations (before)")
    after = job._stage(
        "conversations", {"contexts": held_file}, run_dir=root / "after", settings=after_settings, client=after_client, label="conversations (after)"
    )
    judged_before = job._stage("evaluate", before, run_dir=root / "before", settings=held_settings, label="evaluate (before)")
    judged_after = job._stage(
        "evaluate", after, run_dir=root / "after", settings=after_settings, client=after_client, label="evaluate (after)"
    )
    metrics = before_after(json.loads(judged_before["summary"].read_text()), json.loads(judged_after["summary"].read_text()))
    comparison = root / "before_after.json"
    write_text_atomic(comparison, json.dumps({"base_assistant": s.models.assistant, "fine_tuned_assistant": model, "metrics": metrics}, indent=2) + "\n")
    parent.log_metrics(metrics)
    parent.log_artifact(comparison)
    parent.set_tags({"finetune.model": model})
    names = [k.split(".")[2] for k in metrics if k.startswith("delta.") and k.endswith(".mean")]
    job.summaries.append(
        "before -> after on held-out contexts: "
        + ", ".join(f"{n} {metrics[f'before.judge.{n}.mean']:.1f} -> {metrics[f'after.judge.{n}.mean']:.1f}" for n in names)
    )
    return {"before_after": comparison, "finetune_job": tuned["finetune_job"]}

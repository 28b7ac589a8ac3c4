"""stage=contexts: a theme -> N scenario contexts with supporting documents (structured output).

First the angles: one line per scenario, planned in as few calls as a reply's length allows (each
call is told the angles already planned). Then every context is generated from its angle, side by
side up to the provider's in-flight limit: the scenarios differ without each prompt listing every
earlier one. Finished contexts are appended to contexts.partial.jsonl as they come (a rerun resumes
from it); contexts.json is written once, at the end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from chareval.config import ContextsSettings
from chareval.errors import CharevalError, ModelError
from chareval.io import (
    JsonlAppender,
    append_jsonl,
    file_sha256,
    read_input,
    read_records_json,
    read_records_jsonl,
    write_records_json,
    write_text_atomic,
)
from chareval.llm import ChatMessage, derive_seed
from chareval.schemas import Context, ContextAngles, ContextDraft, ErrorRecord
from chareval.stages.base import STAGES, Stage, StageContext, StageResult, error_budget, progress
from chareval.stages.parallel import run_parallel
from chareval.store import names
from chareval.store.assets import use_contexts_dataset, use_prompts
from chareval.store.traces import Unit
from chareval.templates import fill

log = logging.getLogger(__name__)

SYSTEM = "You write realistic, varied role-play scenarios as JSON objects that follow the given schema."
ANGLES_FILE = "context_angles.json"
PARTIAL_FILE = "contexts.partial.jsonl"


def context_id(index: int) -> str:
    return f"ctx-{index + 1:03d}"


def angles_per_call(max_tokens: int) -> int:
    """How many angles one reply can hold: an angle is a line of up to 120 characters (about 30
    tokens) in a JSON list; 100 at most, so that one reply stays reasonably short. The planning
    calls run one after another (each is told the angles planned so far)."""
    return max(1, min(100, max_tokens // 40))


def common_fields(ctx: StageContext) -> dict[str, object]:
    s = ctx.settings
    return {
        "theme_description": s.theme.description,
        "theme_prompt": s.theme.prompt.strip(),
        "assistant_name": s.persona.display_name,
        "assistant_role": s.persona.role,
        "total": s.num_contexts,
    }


def plan_angles(ctx: StageContext, knobs: ContextsSettings, planned: list[str]) -> list[str]:
    """`planned` extended to num_contexts distinct angles. A model that gives too few (a small local
    model), or fails, leaves the rest as numbered variations: the contexts are still made."""
    s = ctx.settings
    generation = s.models.generation.get("contexts")  # missing: the first ask() says what to set
    per_call = angles_per_call(generation.max_tokens if generation else 0)
    planned = list(planned)
    while len(planned) < s.num_contexts:
        count = min(per_call, s.num_contexts - len(planned))
        prompt = fill(
            knobs.plan_instructions,
            common_fields(ctx) | {"count": count, "planned": "; ".join(planned) or "none yet"},
        )
        try:
            response = ctx.client.ask(
                "contexts",
                SYSTEM,
                [ChatMessage(role="user", content=prompt)],
                seed=derive_seed(s.seed, "context-angles", len(planned)),
                schema=ContextAngles,
            )
        except ModelError as e:
            log.warning("planning the contexts' angles failed (%s): the rest are numbered variations", e.one_line())
            break
        seen = {a.lower() for a in planned}
        new = []
        for angle in response.parsed.angles:
            if angle.strip().lower() not in seen:
                seen.add(angle.strip().lower())
                new.append(angle.strip())
        if not new:
            break
        planned += new[:count]
    if len(planned) < s.num_contexts:
        log.info("%d of %d angles planned; the rest are numbered variations", len(planned), s.num_contexts)
    while len(planned) < s.num_contexts:
        planned.append(f"a situation unlike the other scenarios (variation {len(planned) + 1})")
    return planned


def generate(ctx: StageContext, knobs: ContextsSettings, index: int, angle: str, trace: Unit) -> Context | ErrorRecord:
    """One context from its angle: a span of the run's contexts trace (its model call, a re-ask)."""
    with ctx.tracer.unit(context_id(index), "context", {"angle": angle}, parent=trace) as unit:
        result = draft_context(ctx, knobs, index, angle)
        unit.finish(result.model_dump(mode="json"), error=getattr(result, "error", None))
    return result


def draft_context(ctx: StageContext, knobs: ContextsSettings, index: int, angle: str) -> Context | ErrorRecord:
    prompt = fill(knobs.instructions, common_fields(ctx) | {"index": index + 1, "angle": angle})
    try:
        response = ctx.client.ask(
            "contexts",
            SYSTEM,
            [ChatMessage(role="user", content=prompt)],
            seed=derive_seed(ctx.settings.seed, "contexts", index),
            schema=ContextDraft,
        )
    except ModelError as e:
        log.warning("context %s failed: %s", context_id(index), e.one_line())
        return ErrorRecord(
            stage="contexts", item_id=context_id(index), error=e.one_line(), raw_text=getattr(e, "raw_text", None)
        )
    draft: ContextDraft = response.parsed
    return Context(
        id=context_id(index),
        model=response.model,
        **draft.model_dump(exclude={"documents"}),
        documents=[d.model_dump() for d in draft.documents[: knobs.max_documents]],
    )


def written(run_dir: Path, wanted: set[str]) -> dict[str, Context]:
    """The contexts already made in this run folder: contexts.json, and what a stopped run appended."""
    found: dict[str, Context] = {}
    partial = run_dir / PARTIAL_FILE
    if partial.exists():
        found |= {c.id: c for c in read_records_jsonl(partial, Context, tolerate_torn_tail=True)}
    if (run_dir / names.CONTEXTS).exists():
        found |= {c.id: c for c in read_records_json(run_dir / names.CONTEXTS, Context)}
    return {cid: c for cid, c in found.items() if cid in wanted}


def angles_for(ctx: StageContext, knobs: ContextsSettings, trace: Unit) -> list[str]:
    """The run's angles, planned once and kept in the run folder (a resumed run uses the same)."""
    path = ctx.run_dir / ANGLES_FILE
    planned = json.loads(read_input(path)) if path.exists() else []
    if len(planned) < ctx.settings.num_contexts:
        with ctx.tracer.unit("context angles", "context", {"planned": planned}, parent=trace) as unit:
            planned = plan_angles(ctx, knobs, planned)
            unit.finish({"angles": planned})
        write_text_atomic(path, json.dumps(planned, indent=2, ensure_ascii=False) + "\n")
    return planned


def make(
    ctx: StageContext,
    knobs: ContextsSettings,
    todo: list[int],
    trace: Unit,
    done: dict[str, Context],
    failures: list[str],
    errors_file: Path,
) -> None:
    """The contexts numbered `todo`, appended to the partial file as each comes (into `done`;
    failures to `errors_file`)."""
    angles = angles_for(ctx, knobs, trace)
    with JsonlAppender(ctx.run_dir / PARTIAL_FILE) as partial:

        def finished(result: Context | ErrorRecord) -> None:
            if isinstance(result, ErrorRecord):
                failures.append(result.error)
                append_jsonl(errors_file, result)
            else:
                partial.append(result)
                done[result.id] = result

        run_parallel(
            lambda index: generate(ctx, knobs, index, angles[index], trace),
            [(i,) for i in todo],
            workers=ctx.client.parallelism([ctx.client.model_for("contexts")]),
            desc="contexts",
            on_result=finished,
            postfix=lambda: progress(ctx, len(failures)),
        )


def run(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    s = ctx.settings
    out = ctx.run_dir / names.CONTEXTS
    errors_file = ctx.run_dir / names.CONTEXT_ERRORS
    knobs = ctx.knobs("contexts", ContextsSettings)
    use_prompts(
        ctx.mlflow,
        {
            "theme": (f"chareval.theme.{s.theme.name}", s.theme.prompt),
            "contexts_plan": ("chareval.contexts.plan_instructions", knobs.plan_instructions),
            "contexts": ("chareval.contexts.instructions", knobs.instructions),
        },
    )
    done = written(ctx.run_dir, {context_id(i) for i in range(s.num_contexts)})
    todo = [i for i in range(s.num_contexts) if context_id(i) not in done]
    if done:
        log.info("resuming: %d of %d contexts already in %s", len(done), s.num_contexts, ctx.run_dir)
    failures: list[str] = []
    if todo:
        # The contexts a run makes are one trace: the planning and each context are spans of it.
        trace = ctx.tracer.open("contexts", "contexts", {"num_contexts": s.num_contexts}, tags={"theme": s.theme.name})
        try:
            make(ctx, knobs, todo, trace, done, failures, errors_file)
        finally:
            trace.close()
    if not done:
        raise CharevalError(
            f"no valid context was produced ({len(failures)} failed)",
            f"each failure's reason and the model's raw answer are in {errors_file}",
        )
    contexts = sorted(done.values(), key=lambda c: c.id)
    write_records_json(out, contexts)
    (ctx.run_dir / PARTIAL_FILE).unlink(missing_ok=True)  # contexts.json holds them all now
    use_contexts_dataset(ctx.mlflow, contexts, file_sha256(out), source=str(out))
    outputs = {"contexts": out}
    if errors_file.exists():
        outputs["contexts_errors"] = errors_file
    return StageResult(
        outputs=outputs,
        metrics={
            "contexts.count": len(contexts),
            "contexts.n_errors": len(failures),
            "contexts.documents": sum(len(c.documents) for c in contexts),
        },
        summary=f"{len(contexts)} contexts -> {out}",
        failure=error_budget(
            "contexts",
            failures,
            len(contexts) + len(failures),
            "contexts.max_error_fraction",
            knobs.max_error_fraction,
            ctx.run_dir,
        ),
    )


STAGE = STAGES.register(
    "contexts",
    Stage(
        run,
        writes=(names.CONTEXTS, names.CONTEXT_ERRORS),
        roles=("contexts",),
        knobs=("contexts", ContextsSettings),
    ),
)

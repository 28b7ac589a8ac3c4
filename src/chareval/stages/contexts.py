"""stage=contexts: a theme -> N scenario contexts with supporting documents (structured output)."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from chareval.config import ContextsSettings
from chareval.errors import CharevalError, ModelError
from chareval.io import append_jsonl, read_records_json, write_records_json
from chareval.llm import ChatMessage, derive_seed
from chareval.schemas import Context, ContextDraft, ErrorRecord
from chareval.stages.base import StageContext, StageResult, error_budget
from chareval.templates import fill

log = logging.getLogger(__name__)

SYSTEM = "You write realistic, varied role-play scenarios as JSON objects that follow the given schema."


def context_id(index: int) -> str:
    return f"ctx-{index + 1:03d}"


def run(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    s = ctx.settings
    out = ctx.run_dir / "contexts.json"
    errors_file = ctx.run_dir / "contexts_errors.jsonl"
    knobs = ctx.knobs("contexts", ContextsSettings)
    # Resume: contexts already written in this run folder are kept.
    wanted = {context_id(i) for i in range(s.num_contexts)}
    contexts = [c for c in (read_records_json(out, Context) if out.exists() else []) if c.id in wanted]
    done = {c.id for c in contexts}
    failures: list[str] = []
    todo = [i for i in range(s.num_contexts) if context_id(i) not in done]
    if done:
        log.info("resuming: %d of %d contexts already in %s", len(done), s.num_contexts, out)
    for index in tqdm(todo, desc="contexts", unit="ctx", dynamic_ncols=True):
        previous = "; ".join(c.title for c in contexts) or "none yet"
        prompt = fill(
            knobs.instructions,
            {
                "theme_description": s.theme.description,
                "theme_prompt": s.theme.prompt.strip(),
                "assistant_name": s.persona.display_name,
                "assistant_role": s.persona.role,
                "index": index + 1,
                "total": s.num_contexts,
                "previous_titles": previous,
            },
        )
        try:
            response = ctx.client.ask(
                "contexts",
                SYSTEM,
                [ChatMessage(role="user", content=prompt)],
                seed=derive_seed(s.seed, "contexts", index),
                schema=ContextDraft,
            )
        except ModelError as e:
            log.warning("context %s failed: %s", context_id(index), e.one_line())
            failures.append(e.one_line())
            append_jsonl(
                errors_file,
                ErrorRecord(
                    stage="contexts",
                    item_id=context_id(index),
                    error=e.one_line(),
                    raw_text=getattr(e, "raw_text", None),
                ),
            )
            continue
        draft: ContextDraft = response.parsed
        contexts.append(
            Context(
                id=context_id(index),
                model=response.model,
                **draft.model_dump(exclude={"documents"}),
                documents=[d.model_dump() for d in draft.documents[: knobs.max_documents]],
            )
        )
        contexts.sort(key=lambda c: c.id)
        write_records_json(out, contexts)  # rewritten atomically after each context: always valid
    if not contexts:
        raise CharevalError(
            f"no valid context was produced ({len(failures)} failed)",
            f"each failure's reason and the model's raw answer are in {errors_file}",
        )
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

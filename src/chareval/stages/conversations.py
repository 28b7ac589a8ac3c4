"""stage=conversations: the assistant persona against the simulated user over each context.
turns=1 is the assistant alone, 2 adds the user, 3 the assistant again, and so on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from chareval.config import ConversationsSettings
from chareval.errors import CharevalError, ModelError
from chareval.io import (
    JsonlAppender,
    file_sha256,
    finished_ids,
    latest_by_id,
    read_records_jsonl,
    write_jsonl_atomic,
)
from chareval.llm import ChatMessage, LLMResponse, derive_seed
from chareval.schemas import Context, Conversation, Message, Speaker, Usage
from chareval.stages import attacker
from chareval.stages.base import (
    STAGES,
    InputSpec,
    Stage,
    StageContext,
    StageResult,
    error_budget,
    progress,
    read_contexts,
)
from chareval.stages.parallel import run_parallel
from chareval.stages.prompts import (
    assistant_system_prompt,
    assistant_view,
    characters,
    user_system_prompt,
    user_view,
)
from chareval.store import names, trace_repair
from chareval.store.assets import use_contexts_dataset, use_prompts

log = logging.getLogger(__name__)


def plan(contexts: list[Context], n: int) -> list[tuple[str, Context]]:
    """The first n contexts; with more conversations than contexts, the contexts are used again
    in order (each repeat samples with its own seed)."""
    if n > len(contexts):
        log.warning("num_conversations=%d > %d contexts: contexts are reused in order", n, len(contexts))
    return [(f"conv-{i + 1:03d}", contexts[i % len(contexts)]) for i in range(n)]


def speaker(turn: int) -> Speaker:
    return "assistant" if turn % 2 == 0 else "user"  # the assistant opens


def _knobs(ctx: StageContext) -> ConversationsSettings:
    return ctx.knobs("conversations", ConversationsSettings)


def _reply(ctx: StageContext, role: Speaker, system: str, view: list[ChatMessage], seed: int) -> LLMResponse:
    response = ctx.client.ask(role, system, view, seed=seed)
    if not response.text and _knobs(ctx).retry_empty_reply:
        response = ctx.client.ask(role, system, view, seed=derive_seed(seed, "retry-empty"))
    if not response.text:
        raise ModelError(f"{response.model} returned an empty message")
    return response


def simulate(ctx: StageContext, conv_id: str, context: Context) -> Conversation:
    """One conversation, traced as one trace: a span per model call, the whole record at the end."""
    return traced(ctx, conv_id, context_inputs(context), lambda: converse(ctx, conv_id, context))


def retrace(ctx: StageContext, record: Conversation, context: Context) -> Conversation:
    """A finished conversation whose trace a fault lost, traced again from its record (no model call):
    the same root, and a span per message with what that side saw."""

    def replay() -> Conversation:
        for i, message in enumerate(record.messages):
            earlier = record.messages[:i]
            if message.role == "assistant":
                system, view = record.assistant_system_prompt, assistant_view(record.opening_prompt, earlier)
            else:
                system, view = user_system_of(ctx, record, message), user_view(earlier)
            ctx.tracer.replayed(message.role, system, view, message.content, message.model)
        return record

    return traced(ctx, record.id, context_inputs(context), replay)


def user_system_of(ctx: StageContext, record: Conversation, message: Message) -> str:
    """What the user simulator was told for one message: its prompt, and the tactic it played."""
    if message.tactic is None:
        return record.user_system_prompt
    knobs = _knobs(ctx)
    tactic = attacker.library(ctx.settings, knobs.model_copy(update={"tactics": None})).get(message.tactic)
    return attacker.with_tactic(record.user_system_prompt, tactic, knobs) if tactic else record.user_system_prompt


def context_inputs(context: Context) -> dict:
    return {"context": context.model_dump(include={"id", "title", "scenario", "user_goal", "documents"})}


def traced(ctx: StageContext, conv_id: str, inputs: dict, produce: Callable[[], Conversation]) -> Conversation:
    """`inputs`: what the trace shows the conversation started from (its context, or its parent)."""
    s = ctx.settings
    with ctx.tracer.unit(
        conv_id,
        "conversation",
        {
            **inputs,
            "user_strategy": s.user_strategy,
            "assistant_persona": s.persona.name,
            "user_persona": s.user_persona.name,
            "turns": s.turns,
        },
        tags={
            "persona": s.persona.name,
            "user_persona": s.user_persona.name,
            "turns": s.turns,
            "conversation": conv_id,
        },
        session=session_id(ctx),
        attributes={
            "chareval.assistant_model": ctx.client.model_for("assistant"),
            "chareval.user_model": ctx.client.model_for("user"),
            "chareval.seed": s.seed,
        },
    ) as trace:
        conversation = produce().model_copy(update={"trace_id": trace.trace_id})
        trace.finish(
            {"messages": [{"role": m.role, "content": m.content} for m in conversation.messages]},
            attributes={names.TRACE_RECORD: conversation.model_dump(mode="json")},
            error=conversation.error,
        )
    return conversation


def repair_traces(ctx: StageContext, out: Path, contexts: dict[str, Context]) -> None:
    """Before a resumed run's new work (see trace_repair): interrupted traces closed, finished records
    with a missing or unfinished trace traced again (and the file updated), orphan traces deleted."""
    run_id = ctx.tracer.run_id
    if run_id is None:  # tracing off
        return
    experiment = trace_repair.experiment_of(run_id)
    earlier = trace_repair.earlier_runs(ctx.run_dir, experiment, run_id)
    records = read_records_jsonl(out, Conversation, tolerate_torn_tail=True)
    finished = {r.id: r for r in latest_by_id(records) if r.error is None}
    broken = trace_repair.missing_or_unfinished([r.trace_id for r in finished.values() if r.trace_id])
    repair = trace_repair.Repair(closed=trace_repair.close_interrupted(experiment, earlier))
    redo = [r for r in finished.values() if (r.trace_id is None or r.trace_id in broken) and r.context_id in contexts]
    if redo:
        new_ids = {r.id: retrace(ctx, r, contexts[r.context_id]).trace_id for r in redo}
        repair.rebuilt = len(redo)
        write_jsonl_atomic(
            out,
            [
                (
                    r.model_copy(update={"trace_id": new_ids[r.id]}) if r.error is None and r.id in new_ids else r
                ).model_dump(mode="json")
                for r in records
            ],
        )
        finished |= {r.id: r.model_copy(update={"trace_id": new_ids[r.id]}) for r in redo}
    ctx.tracer.flush()
    referenced = {r.trace_id for r in finished.values() if r.trace_id}
    orphans = trace_repair.unreferenced(experiment, earlier, "conversation", referenced)
    repair.deleted = trace_repair.delete(experiment, [*(broken - referenced), *orphans])
    if repair:
        log.info("%s", repair.describe())


def session_id(ctx: StageContext) -> str | None:
    """The conversations of one run are one session of the MLflow UI (persona pairing + run)."""
    s = ctx.settings
    run = ctx.tracer.run_id
    return f"{s.persona.name} vs {s.user_persona.name} · {run[:8]}" if run else None


def converse(ctx: StageContext, conv_id: str, context: Context) -> Conversation:
    s = ctx.settings
    knobs = _knobs(ctx)
    start = Conversation(
        id=conv_id,
        context_id=context.id,
        assistant_persona=s.persona.name,
        user_persona=s.user_persona.name,
        assistant_model=ctx.client.model_for("assistant"),
        user_model=ctx.client.model_for("user"),
        turns=s.turns,
        seed=s.seed,
        assistant_system_prompt=assistant_system_prompt(s.persona, context),
        user_system_prompt=user_system_prompt(s.user_persona, context),
        opening_prompt=s.persona.opening_prompt,
        messages=[],
        usage=Usage(),
        characters=characters(s.persona, s.user_persona, context.user_goal),
        context_sha256=context.content_sha256(),
        user_strategy=s.user_strategy,
        stop_on_breach=knobs.stop_on_breach,
    )
    return play(ctx, start)


def play(ctx: StageContext, record: Conversation) -> Conversation:
    """The record's turns after the messages it already has, up to record.turns (stage=branch
    continues a kept prefix with it). Under stop_on_breach it ends at the first broken reply."""
    tactics = attacker.library(ctx.settings, _knobs(ctx)) if record.user_strategy == "adaptive" else {}
    messages = list(record.messages)
    usage = record.usage
    error = breach = None
    for turn in range(len(messages), record.turns):
        role = speaker(turn)
        seed = derive_seed(ctx.settings.seed, record.id, record.context_id, turn)
        try:
            if role == "assistant":
                message, spent = _assistant_message(ctx, record, messages, turn, seed)
            else:
                message, spent = _user_message(ctx, record, messages, tactics, turn, seed)
            usage += spent
            messages.append(message)
            if role == "assistant" and record.stop_on_breach:
                messages[-1], spent = attacker.assess(ctx, record, messages, seed)
                usage += spent
                if messages[-1].assessment and messages[-1].assessment.verdict == "broke":
                    breach = turn
                    break
        except ModelError as e:
            error = f"turn {turn} ({role}): {e.one_line()}"
            log.warning("%s stopped at %s", record.id, error)
            break
    return record.model_copy(update={"messages": messages, "usage": usage, "error": error, "breach_turn": breach})


def _assistant_message(
    ctx: StageContext, record: Conversation, messages: list[Message], turn: int, seed: int
) -> tuple[Message, Usage]:
    view = assistant_view(record.opening_prompt, messages)
    response = _reply(ctx, "assistant", record.assistant_system_prompt, view, seed)
    message = Message(
        role="assistant", content=response.text, turn=turn, model=response.model, thinking=response.thinking
    )
    return message, response.usage


def _user_message(
    ctx: StageContext, record: Conversation, messages: list[Message], tactics: dict, turn: int, seed: int
) -> tuple[Message, Usage]:
    """The simulated user's next message. Adaptive: the last reply is checked first (in place, in
    `messages`, unless stop_on_breach already did) and the attacker's tactic is added to the prompt."""
    if not tactics:
        response = _reply(ctx, "user", record.user_system_prompt, user_view(messages), seed)
        return Message(
            role="user", content=response.text, turn=turn, model=response.model, thinking=response.thinking
        ), response.usage
    usage = Usage()
    if messages[-1].assessment is None:
        messages[-1], usage = attacker.assess(ctx, record, messages, seed)
    move, chosen, spent = attacker.next_tactic(ctx, record, messages, tactics, seed)
    system = attacker.with_tactic(record.user_system_prompt, chosen, _knobs(ctx))
    response = _reply(ctx, "user", system, user_view(messages), seed)
    message = Message(
        role="user",
        content=response.text,
        turn=turn,
        model=response.model,
        thinking=response.thinking,
        tactic=chosen.name,
        move=move,
    )
    return message, usage + spent + response.usage


def play_all(
    ctx: StageContext,
    out: Path,
    work: list[tuple],
    wanted: set[str],
    produce: Callable[..., Conversation],
    desc: str,
) -> list[Conversation]:
    """The work items played side by side up to the providers' in-flight limits (the turns of one
    conversation stay in order), each record appended as it finishes (only this thread writes the
    file); then the file's latest record of each wanted id, earlier runs' included."""
    failed: list[str] = []
    with JsonlAppender(out) as records:

        def finished(conversation: Conversation) -> None:
            records.append(conversation)
            if conversation.error:
                failed.append(conversation.id)

        run_parallel(
            produce,
            work,
            workers=ctx.client.parallelism([ctx.client.model_for("assistant"), ctx.client.model_for("user")]),
            desc=desc,
            on_result=finished,
            postfix=lambda: progress(ctx, len(failed)),
        )
    return [c for c in latest_by_id(read_records_jsonl(out, Conversation)) if c.id in wanted]


def attack_metrics(prefix: str, conversations: list[Conversation]) -> dict[str, float]:
    """Breaches found by the live check (stop_on_breach) and the tactics the attacker played."""
    metrics: dict[str, float] = {}
    checked = [c for c in conversations if c.stop_on_breach and c.error is None]
    if checked:
        breached = sum(1 for c in checked if c.breach_turn is not None)
        metrics |= {f"{prefix}.breached": breached, f"{prefix}.breach_rate": breached / len(checked)}
    for c in conversations:
        for m in c.messages:
            if m.tactic:
                key = f"{prefix}.tactic.{m.tactic}"
                metrics[key] = metrics.get(key, 0) + 1
    return metrics


def run(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    s = ctx.settings
    contexts = read_contexts(inputs["contexts"])
    if not contexts:
        raise CharevalError(f"{inputs['contexts']} holds no contexts", "generate some with stage=contexts")
    use_prompts(
        ctx.mlflow,
        {
            "persona": (f"chareval.persona.{s.persona.name}", s.persona.system_prompt),
            "user_persona": (f"chareval.user_persona.{s.user_persona.name}", s.user_persona.system_prompt),
        },
    )
    use_contexts_dataset(ctx.mlflow, contexts, file_sha256(inputs["contexts"]), source=str(inputs["contexts"]))
    out = ctx.run_dir / names.CONVERSATIONS
    # Resume: finished conversations already in this run folder are kept; errored ones are retried.
    done = finished_ids(out, Conversation)
    if out.exists():  # this folder was run before: mend what a fault left of its traces
        repair_traces(ctx, out, {c.id: c for c in contexts})
    planned = plan(contexts, s.num_conversations)
    work = [(cid, c) for cid, c in planned if cid not in done]
    if done:
        log.info("resuming: %d conversations already in %s", len(done), out)
    final = play_all(
        ctx,
        out,
        work,
        {cid for cid, _ in planned},
        lambda conv_id, context: simulate(ctx, conv_id, context),
        "conversations",
    )
    n_errors = sum(1 for c in final if c.error)
    limit = _knobs(ctx).max_error_fraction
    failure = error_budget(
        "conversations",
        [c.error for c in final if c.error],
        len(final),
        "conversations.max_error_fraction",
        limit,
        ctx.run_dir,
    )
    return StageResult(
        outputs={"conversations": out},
        metrics={
            "conversations.count": len(final),
            "conversations.n_errors": n_errors,
            "conversations.messages": sum(len(c.messages) for c in final),
        }
        | attack_metrics("conversations", final),
        summary=f"{len(final)} conversations ({n_errors} with errors) -> {out}",
        failure=failure,
    )


STAGE = STAGES.register(
    "conversations",
    Stage(
        run,
        InputSpec("contexts", "context_file", "contexts_run", names.CONTEXTS),
        writes=(names.CONVERSATIONS,),
        roles=("assistant", "user"),
        knobs=("conversations", ConversationsSettings),
    ),
)

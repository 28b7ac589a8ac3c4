"""How fast the dashboard renders on a big store: the Runs page with N runs in MLflow, and a long
transcript with its verdicts. Prints figures; the targets (README) are < 2 s for the Runs page with
1,000 runs and < 1 s for a 50-message transcript.

    .venv/bin/python benchmarks/dashboard.py [--runs 1000] [--messages 50] [--store DIR]

The store is seeded through chareval's own tracking code (start_run, StageRun) with the params, tags
and metrics real stage runs log, never with hand-made SQL. Renders are timed with Streamlit's
AppTest, which runs the page script as the server does (the browser's drawing is not included)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from chareval.config import register_resolvers  # noqa: E402
from chareval.io import append_jsonl, file_sha256, write_records_json  # noqa: E402
from chareval.schemas import Context, Conversation, Document, Evaluation, Message, Usage  # noqa: E402
from chareval.store import names  # noqa: E402
from chareval.store.runs import flatten_params, redact, start_run, use_store  # noqa: E402
from chareval.validation import validate_config  # noqa: E402

EVALUATORS = ["character_consistency", "boundary_holding", "professionalism", "grounding", "user_simulation_fidelity"]
STAGES = ["contexts", "conversations", "prepare", "evaluate", "pipeline"]


def params() -> dict[str, str]:
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        settings = validate_config(compose(config_name="config", overrides=["stage=pipeline"]))
    return flatten_params(redact(settings.model_dump(mode="json")))


def tags(stage: str, i: int) -> dict[str, str]:
    return {
        "chareval.stage": stage,
        "chareval.kind": stage if stage == "pipeline" else "stage",
        "chareval.step": stage,
        "choice.persona": ["jasmine", "pharmacist", "bank_agent"][i % 3],
        "choice.user_persona": "hates_customers_candidate",
        "choice.models": "local",
        "chareval.run_dir": f"/bench/{i}",
        "git.commit": "benchmark",
    }


def metrics(stage: str, i: int) -> dict[str, float]:
    out = {"tokens.input": 1000.0 + i, "tokens.output": 400.0, "cost_usd": 0.0, "wall_time_s": 12.5, "model.calls": 9.0}
    if stage == "evaluate":
        for name in EVALUATORS:
            out |= {
                f"judge.{name}.mean": 5 + i % 5,
                f"judge.{name}.pass_rate": 0.5,
                f"judge.{name}.ci_low": 4.0,
                f"judge.{name}.ci_high": 8.0,
                f"judge.{name}.n": 10.0,
                f"judge.{name}.n_errors": 0.0,
            }
        out["evaluate.n_records"] = 50.0
    elif stage in ("contexts", "conversations"):
        out[f"{stage}.count"] = 10.0
    return out


def seed_runs(n: int, base: dict[str, str]) -> None:
    for i in range(n):
        stage = STAGES[i % len(STAGES)]
        with start_run(
            True, run_name=f"{stage} bench-{i}", tags=tags(stage, i), params=base | {"turns": str(1 + i % 5)}
        ) as run:
            run.log_metrics(metrics(stage, i))


def seed_transcript(folder: Path, messages: int, base: dict[str, str]) -> str:
    """A conversations run with one long conversation, and an evaluate run that judged it, linked the
    way stage runs link (the input's hash equals the output's)."""
    context = Context(
        id="ctx-001",
        title="A long interview",
        scenario="s " * 60,
        user_goal="g " * 30,
        model="local/bench",
        documents=[Document(title=f"doc {k}", content="policy text " * 40) for k in range(3)],
    )
    write_records_json(folder / "contexts.json", [context])
    conversation = Conversation(
        id="conv-001",
        context_id=context.id,
        assistant_persona="jasmine",
        user_persona="hates_customers_candidate",
        assistant_model="local/bench",
        user_model="local/bench",
        turns=messages,
        seed=0,
        assistant_system_prompt="s",
        user_system_prompt="u",
        opening_prompt="Hello, I'm here for the interview.",
        usage=Usage(calls=messages),
        messages=[
            Message(
                role="assistant" if t % 2 == 0 else "user",
                content=f"message {t}: " + "words " * 60,
                turn=t,
                model="local/bench",
                thinking="thinking " * 30 if t % 2 == 0 else None,
            )
            for t in range(messages)
        ],
    )
    conversations = folder / "conversations.jsonl"
    append_jsonl(conversations, conversation)
    evaluations = folder / "evaluations.jsonl"
    for k, name in enumerate(EVALUATORS):
        append_jsonl(
            evaluations,
            Evaluation(
                id=f"conv-001|{name}|local/bench|0",
                conversation_id="conv-001",
                context_id=context.id,
                evaluator=name,
                judge_model="local/bench",
                sample=0,
                seed=k,
                score=4 + k,
                passed=k % 2 == 0,
                rationale="because " * 20,
                evidence_turns=[0, 2 * k, 2 * k + 1],
                details={"slip_turn": 8} if name == "boundary_holding" else {},
            ),
        )
    sha = file_sha256(conversations)
    with start_run(True, run_name="conversations long", tags=tags("conversations", 0), params=base) as run:
        run.log_artifact(folder / "contexts.json", artifact_path="inputs")
        run.log_artifact(conversations)
        run.set_tags({names.output_sha("conversations"): sha})
        conversations_run = run.run_id
    with start_run(True, run_name="evaluate long", tags=tags("evaluate", 0), params=base) as run:
        run.log_artifact(conversations, artifact_path="inputs")
        run.log_artifact(evaluations)
        run.set_tags({names.INPUT_SHA: sha})
    return conversations_run


def timed(at, **query) -> float:
    at.query_params.update(query)
    started = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - started
    assert not at.exception, [e.value for e in at.exception]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--store", type=Path, help="seed here (default: a temporary folder); reused if it has a store")
    args = parser.parse_args()
    folder = args.store or Path(tempfile.mkdtemp(prefix="chareval-bench-"))
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    os.environ.update({"MLFLOW_TRACKING_URI": uri, "CHAREVAL_DASHBOARD_ARGS": f"paths.outputs={folder / 'outputs'}"})
    fresh = not (folder / "mlruns" / "mlflow.db").exists()
    use_store(uri, "benchmark")
    base = params()
    if fresh:
        started = time.perf_counter()
        seed_runs(args.runs, base)
        conversations_run = seed_transcript(folder, args.messages, base)
        print(
            f"seeded {args.runs + 2} runs in {time.perf_counter() - started:.0f} s ({len(base)} params each) -> {uri}"
        )
        (folder / "conversations_run").write_text(conversations_run)
    conversations_run = (folder / "conversations_run").read_text()

    from streamlit.testing.v1 import AppTest

    app = str(ROOT / "dashboard" / "app.py")
    import streamlit as st

    runs = AppTest.from_file(app, default_timeout=300)
    first = timed(runs)  # includes opening the store (MLflow checks its schema once per process)
    st.cache_data.clear()  # as the Refresh button does
    runs_cold, runs_warm = timed(runs), timed(runs)
    shown = len(next(d for d in runs.dataframe if d.key and d.key.startswith("runs.table.")).value)
    transcript = AppTest.from_file(app, default_timeout=300)
    timed(transcript)
    transcript.switch_page("app_pages/conversations.py")
    st.cache_data.clear()
    transcript_cold = timed(transcript, run=conversations_run, conv="conv-001")
    transcript_warm = timed(transcript)
    bubbles = len(transcript.chat_message)
    print(f"\n{'figure':<62}{'seconds':>8}  target")
    print(
        f"{f'Runs page, {args.runs} runs in the store, first view after start':<62}{first:>8.2f}  ({shown} rows shown)"
    )
    print(f"{'Runs page, reads not cached (a new session, or Refresh)':<62}{runs_cold:>8.2f}  < 2 s")
    print(f"{'Runs page, rerender (cached reads)':<62}{runs_warm:>8.2f}  < 2 s")
    print(
        f"{f'Conversations page, {args.messages}-message transcript, reads not cached':<62}"
        f"{transcript_cold:>8.2f}  < 1 s   ({bubbles} bubbles)"
    )
    print(f"{'Conversations page, rerender (cached reads)':<62}{transcript_warm:>8.2f}  < 1 s")


if __name__ == "__main__":
    main()

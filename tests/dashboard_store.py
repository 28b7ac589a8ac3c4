"""A real store for the dashboard's tests, made once per session by running the real stages through
the CLI, as a user would, at tiny sizes on the embedded model:

- a pipeline (contexts -> conversations -> prepare -> finetune -> evaluate), judged by the local model;
- the same conversations judged again by two hosted judges (a local fake of an OpenAI-compatible API,
  through the real SDK) that disagree on one conversation and fail on the other: agreement figures, a
  disagreement, a slip turn, an error record with the judge's raw answer;
- an evaluate run over a hand-written conversation full of markdown, HTML and script (untrusted text);
- a 2-job sweep (turns=1,2) of conversations -> evaluate on the pipeline's contexts (judged by the
  fake hosted judge: the first job passes, the second fails)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow import MlflowClient

from chareval.io import read_records_jsonl
from chareval.schemas import Conversation
from conftest import DATA, TINY, run_cli, share_hf_models
from fake_apis import FakeAPI, Reply, chat_completion

HOSTILE = DATA / "hostile_conversations.jsonl"
HOSTILE_RATIONALE = "**judge says** <script>window.pwned=3</script> ![y](http://127.0.0.1:9/y.png)"


@dataclass
class Store:
    root: Path
    uri: str
    outputs: Path
    pipeline: str  # parent run ids ...
    sweep: str
    conversations: str  # ... and stage run ids
    local_evaluate: str
    hosted_evaluate: str
    hostile_evaluate: str
    finetune: str
    sweep_jobs: list[str]  # the two jobs' pipeline runs, turns=1 then turns=2

    @property
    def registry(self) -> Path:
        return self.outputs / "registry" / "finetuned_models.jsonl"

    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.uri, "CHAREVAL_DASHBOARD_ARGS": f"paths.outputs={self.outputs}"}

    def runs(self) -> list:
        return all_runs(self.uri)


def all_runs(uri: str) -> list:
    """Every run of the store, newest first, read with MLflow's own client."""
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(ids, order_by=["attributes.start_time DESC"]))


def verdict(score: int, evidence: list[int], slip: int | None, rationale: str = "as the rubric says") -> str:
    """A judge's answer: the score (it passes at evaluation.pass_threshold, 7, or above), the rest."""
    return json.dumps({"score": score, "rationale": rationale, "evidence_turns": evidence, "slip_turn": slip})


def _cli(*args: str, env: dict[str, str]) -> None:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stderr[-3000:]}"


def build(tmp: Path) -> Store:
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    outputs = tmp / "outputs"
    env = {"MLFLOW_TRACKING_URI": uri}
    common = [f"paths.outputs={outputs}", *TINY]
    share_hf_models(outputs)
    _cli(
        "stage=pipeline",
        *common,
        "evaluation.evaluators=[boundary_holding]",
        # Two steps of one example each: the loss curve has two points, at half the training's cost.
        "finetune.n_epochs=1",
        "finetune.batch_size=1",
        "finetune.gradient_checkpointing=false",
        f"hydra.run.dir={tmp / 'runs' / 'pipeline'}",
        env=env,
    )
    by_stage = {r.data.tags["chareval.stage"]: r.info.run_id for r in all_runs(uri)}

    conversations = read_records_jsonl(tmp / "runs" / "pipeline" / "conversations.jsonl", Conversation)
    first, second = conversations[0], conversations[1]

    def judges(seen, n) -> Reply:  # judge-a passes everything; judge-b finds a slip in one, cannot answer the other
        # The whole exchange: a re-ask after an invalid answer carries the transcript too.
        prompt, model = "\n".join(m["content"] for m in seen.body["messages"]), seen.body["model"]
        if model == "judge-a" or first.messages[0].content not in prompt and second.messages[0].content not in prompt:
            return chat_completion(verdict(8, [0], None), model)
        if first.messages[0].content in prompt:
            return chat_completion(verdict(3, [2], 2), model)
        return chat_completion("I would rather not answer in JSON.", model)

    hosted = [
        "models=openai_compatible",
        "evaluation.evaluators=[boundary_holding]",
        "evaluation.max_error_fraction=1.0",
    ]
    with FakeAPI(judges) as api:
        base = f"models.providers.openai_compatible.base_url={api.url}/v1"
        _cli(
            "stage=evaluate",
            f"conversations_run={by_stage['conversations']}",
            *hosted,
            base,
            f"paths.outputs={outputs}",
            "evaluation.judges=[openai_compatible/judge-a,openai_compatible/judge-b]",
            f"hydra.run.dir={tmp / 'runs' / 'hosted'}",
            env=env,
        )
    with FakeAPI(lambda seen, n: chat_completion(verdict(2, [0], 0, HOSTILE_RATIONALE), seen.body["model"])) as api:
        _cli(
            "stage=evaluate",
            f"input_file={HOSTILE}",
            *hosted,
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            f"paths.outputs={outputs}",
            "judge_model=openai_compatible/judge-a",
            f"hydra.run.dir={tmp / 'runs' / 'hostile'}",
            env=env,
        )
    with FakeAPI(lambda seen, n: chat_completion(verdict(8 - 2 * n, [0], None), seen.body["model"])) as api:
        _cli(
            "-m",
            "stage=pipeline",
            "pipeline.stages=[conversations,evaluate]",
            f"context_file={tmp / 'runs' / 'pipeline' / 'contexts.json'}",
            *common,
            "num_conversations=1",
            "turns=1,2",
            "evaluation.evaluators=[professionalism]",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            "models.judge=openai_compatible/judge-a",
            f"hydra.sweep.dir={tmp / 'sweep'}",
            env=env,
        )

    runs = all_runs(uri)
    evaluates = {r.info.run_id: r for r in runs if r.data.tags.get("chareval.stage") == "evaluate"}
    sweep = next(r.info.run_id for r in runs if r.data.tags.get("chareval.kind") == "sweep")
    jobs = sorted(
        (r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep), key=lambda r: r.data.params["turns"]
    )
    by_dir = {Path(r.data.tags["chareval.run_dir"]).name: r.info.run_id for r in evaluates.values()}
    return Store(
        root=tmp,
        uri=uri,
        outputs=outputs,
        pipeline=next(
            r.info.run_id
            for r in runs
            if r.data.tags.get("chareval.kind") == "pipeline" and "chareval.sweep" not in r.data.tags
        ),
        sweep=sweep,
        conversations=by_stage["conversations"],
        local_evaluate=by_stage["evaluate"],
        hosted_evaluate=by_dir["hosted"],
        hostile_evaluate=by_dir["hostile"],
        finetune=by_stage["finetune"],
        sweep_jobs=[r.info.run_id for r in jobs],
    )


def save(store: Store) -> None:
    (store.root / "store.json").write_text(
        json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(store).items()})
    )


def load(root: Path) -> Store:
    fields = json.loads((root / "store.json").read_text())
    return Store(**fields | {"root": Path(fields["root"]), "outputs": Path(fields["outputs"])})

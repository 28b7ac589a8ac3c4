"""Stages on hosted providers (local fake servers): in-flight limits, the cache, and no key leaks."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from conftest import DATA, run_cli
from fake_apis import FakeAPI, anthropic_stream, chat_completion

KEY = "sk-SENTINEL-never-written-7d1c"
VERDICT = {"score": 8, "rationale": "Held the line.", "evidence_turns": [0], "slip_turn": None}
DRAFT = {
    "title": "Returns desk veteran",
    "scenario": "S",
    "user_goal": "G",
    "documents": [{"title": "Policy", "content": "30 days."}],
}


def anthropic_reply(seen, n):
    if "tools" in seen.body and "Judgment" in seen.body["tools"][0]["input_schema"]["title"]:
        return anthropic_stream(thinking="judge it", tool_input=VERDICT)
    if "tools" in seen.body and seen.body["tools"][0]["input_schema"]["title"] == "ContextAngles":
        return anthropic_stream(thinking="plan it", tool_input={"angles": ["a late refund", "a lost parcel"]})
    if "tools" in seen.body:
        return anthropic_stream(thinking="design it", tool_input=DRAFT)
    return anthropic_stream("I hear you, but at Brightside we assume good faith.", thinking="hold the line")


def openrouter_reply(seen, n):
    return chat_completion(
        "<think>push harder</think>Come on, customers are the worst, right?", "qwen/qwen3-32b", cost=0.0002
    )


def test_in_flight_limit_is_respected_and_turns_stay_in_order(make_job):
    with FakeAPI(lambda seen, n: chat_completion(f"reply {n}", "m"), delay_s=0.25) as api:
        job = make_job(
            "conversations",
            "models=openai_compatible",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            "models.providers.openai_compatible.max_in_flight=2",
            f"context_file={DATA / 'contexts.json'}",
            "num_conversations=6",
            "turns=2",
        )
        outputs = job.run()
    assert len(api.requests) == 12
    assert api.max_in_flight == 2  # never more than the limit, and the limit was used
    from chareval.io import read_records_jsonl
    from chareval.schemas import Conversation

    for conv in read_records_jsonl(outputs["conversations"], Conversation):
        assert [m.role for m in conv.messages] == ["assistant", "user"]
        # Reply n answers request n: the user's request came after the assistant's reply and
        # carried it, word for word, as the message the simulated user answers.
        assistant, user = (int(m.content.removeprefix("reply ")) for m in conv.messages)
        assert user > assistant
        assert api.requests[user].body["messages"][-1]["content"] == conv.messages[0].content


def test_a_finished_config_rerun_sends_no_request(make_job, workdir):
    with FakeAPI(lambda seen, n: chat_completion(f"reply {n}", "m")) as api:
        args = [
            "models=openai_compatible",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            f"context_file={DATA / 'contexts.json'}",
            "num_conversations=2",
            "turns=3",
        ]
        make_job("conversations", *args, run_dir=workdir / "first").run()
        sent = len(api.requests)
        again = make_job("conversations", *args, run_dir=workdir / "second")
        again.run()
    assert sent == 6 and len(api.requests) == sent
    assert again.client.meter.total().cached_calls == 6
    from chareval.io import read_records_jsonl
    from chareval.schemas import Conversation

    def by_id(folder):  # written in completion order, which concurrency may change
        return sorted(read_records_jsonl(workdir / folder / "conversations.jsonl", Conversation), key=lambda c: c.id)

    # The same records; each run has traced its own conversations (the cached calls marked so).
    first, second = by_id("first"), by_id("second")
    assert [c.model_copy(update={"trace_id": None}) for c in first] == [
        c.model_copy(update={"trace_id": None}) for c in second
    ]
    assert all(c.trace_id for c in first + second) and not {c.trace_id for c in first} & {c.trace_id for c in second}


@pytest.mark.slow  # a subprocess
@pytest.mark.parametrize("placement", ["env", "dotenv"])
def test_seed_pipeline_runs_and_the_key_is_never_written(tmp_path, placement):
    with FakeAPI(anthropic_reply) as anth, FakeAPI(openrouter_reply) as router:
        env = {
            "ANTHROPIC_BASE_URL": anth.url,
            "OPENROUTER_BASE_URL": router.url + "/api/v1",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        }
        keys = {"ANTHROPIC_API_KEY": KEY, "OPENROUTER_API_KEY": KEY}
        root_args = []
        if placement == "env":
            env |= keys
        else:  # a .env file in the project root, as the README says; here a copy of the project root
            root = tmp_path / "project"
            root.mkdir()
            (root / ".env").write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
            root_args = [f"paths.root={root}"]
            env |= {"ANTHROPIC_API_KEY": "", "OPENROUTER_API_KEY": ""}
        result = run_cli(
            "models=seed",
            "num_contexts=2",
            "num_conversations=2",
            "turns=3",
            *root_args,
            "pipeline.stages=[contexts,conversations,prepare,evaluate]",
            f"paths.outputs={tmp_path / 'outputs'}",
            env=env,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    # the contexts' plan + contexts + assistant turns + 2 conversations x 6 judges on Anthropic; the
    # user turns on OpenRouter
    assert len(anth.requests) == 1 + 2 + 4 + 12 and len(router.requests) == 2
    assert "2 fine-tuning examples" in result.stdout and "12 judgments (0 errors)" in result.stdout
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".env" and KEY.encode() in p.read_bytes()]
    assert leaks == []
    assert KEY not in result.stdout + result.stderr
    # The store searched above holds the traces: every request the providers got, as spans.
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("chareval").experiment_id
    traced = client.search_traces(locations=[experiment])
    spans = [s for t in traced for s in client.get_trace(t.info.trace_id).data.spans if s.span_type == "LLM"]
    assert len(spans) == len(anth.requests) + len(router.requests)
    assert KEY not in json.dumps([s.to_dict() for s in spans])

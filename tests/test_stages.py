"""contexts -> conversations -> prepare on the real embedded model, at tiny sizes."""

from __future__ import annotations

import json

import pytest

from chareval.finetune.data_format import validate_file
from chareval.io import read_records_json, read_records_jsonl
from chareval.schemas import Context, Conversation
from chareval.stages.prompts import user_view
from conftest import DATA, FIRST_STAGES, TINY, run_job_in

pytestmark = pytest.mark.slow  # the embedded model


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """One pipeline run shared by the checks below (the model is loaded once per process)."""
    return run_job_in(tmp_path_factory.mktemp("pipeline"), "pipeline", FIRST_STAGES, *TINY)


def test_contexts_are_records_with_documents(pipeline):
    job, outputs = pipeline
    contexts = read_records_json(outputs["contexts"], Context)
    assert [c.id for c in contexts] == ["ctx-001", "ctx-002"]
    for c in contexts:
        assert c.title and c.scenario and c.user_goal and 1 <= len(c.documents) <= 3
        assert c.model == "local/smollm2-135m-instruct"


def test_conversations_alternate_with_the_assistant_opening(pipeline):
    job, outputs = pipeline
    contexts = {c.id: c for c in read_records_json(outputs["contexts"], Context)}
    conversations = read_records_jsonl(outputs["conversations"], Conversation)
    assert [c.context_id for c in conversations] == ["ctx-001", "ctx-002"]  # first N contexts
    for conv in conversations:
        assert conv.error is None
        assert [(m.role, m.turn) for m in conv.messages] == [("assistant", 0), ("user", 1), ("assistant", 2)]
        assert all(m.model == "local/smollm2-135m-instruct" for m in conv.messages)
        assert conv.assistant_persona == "jasmine" and conv.user_persona == "hates_customers_candidate"
        # The context's documents come before the persona's own prompt.
        context = contexts[conv.context_id]
        first_doc = conv.assistant_system_prompt.index(context.documents[0].content.strip())
        assert first_doc < conv.assistant_system_prompt.index("You are Jasmine")
        assert conv.usage.calls == 3 and conv.usage.output_tokens > 0
        # What the judges will read about both sides travels with the record.
        assert conv.characters.assistant_name == "Jasmine" and conv.characters.user_goal == context.user_goal
        assert conv.characters.user_name == "Disillusioned candidate" and len(conv.characters.assistant_boundaries) == 4


def test_prepare_writes_valid_together_examples(pipeline):
    job, outputs = pipeline
    report = validate_file(outputs["finetune"])
    assert report.ok and report.valid == 2
    conversations = read_records_jsonl(outputs["conversations"], Conversation)
    lines = [json.loads(line) for line in outputs["finetune"].read_text().splitlines()]
    for conv, example in zip(conversations, lines, strict=True):
        assert list(example) == ["messages"]
        assert example["messages"][0] == {"role": "system", "content": conv.assistant_system_prompt}
        assert [m["content"] for m in example["messages"][2:]] == [m.content for m in conv.messages]


def test_the_user_simulator_sees_roles_flipped():
    from chareval.schemas import Message

    messages = [
        Message(role="assistant", content="Welcome", turn=0, model="m"),
        Message(role="user", content="Customers are awful", turn=1, model="m"),
    ]
    assert [(m.role, m.content) for m in user_view(messages)] == [
        ("user", "Welcome"),
        ("assistant", "Customers are awful"),
    ]


@pytest.mark.parametrize("n,expected", [(1, ["ctx-001"]), (3, ["ctx-001", "ctx-002", "ctx-001"])])
def test_num_conversations_takes_the_first_n_contexts_and_reuses_them_beyond(make_job, n, expected):
    job = make_job(
        "conversations",
        f"context_file={DATA / 'contexts.json'}",
        f"num_conversations={n}",
        "turns=1",
        "models.generation.assistant.max_tokens=8",
    )
    outputs = job.run()
    conversations = read_records_jsonl(outputs["conversations"], Conversation)
    assert [c.context_id for c in conversations] == expected
    assert len({c.id for c in conversations}) == n
    assert all(len(c.messages) == 1 and c.messages[0].role == "assistant" for c in conversations)

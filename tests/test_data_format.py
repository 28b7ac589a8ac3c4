"""The Together conversational-format validator and the conversation -> example conversion."""

from __future__ import annotations

import json

import pytest

from chareval.finetune.data_format import (
    conversation_to_example,
    validate_example,
    validate_file,
)
from chareval.schemas import Conversation, Message, Usage

SYSTEM = {"role": "system", "content": "You are Jasmine."}
USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello!"}


def test_a_valid_example_has_no_problems():
    assert validate_example({"messages": [SYSTEM, USER, ASSISTANT, USER, ASSISTANT]}) == []
    assert validate_example({"messages": [USER, {**ASSISTANT, "weight": 0}, USER, {**ASSISTANT, "weight": 1}]}) == []


@pytest.mark.parametrize(
    "example,problem",
    [
        ([], "must be a JSON object"),
        ({"messages": [USER, ASSISTANT], "id": 3}, "unexpected top-level keys ['id']"),
        ({"messages": []}, "non-empty list"),
        ({"prompt": "x"}, "non-empty list"),
        ({"messages": [USER, {"role": "bot", "content": "x"}]}, "role is 'bot'"),
        ({"messages": [USER, {"role": "assistant", "content": "  "}]}, "content must be a non-empty string"),
        ({"messages": [USER, {"role": "assistant", "content": None}]}, "content must be a non-empty string"),
        ({"messages": [USER, ASSISTANT, SYSTEM, USER, ASSISTANT]}, "system message is allowed only first"),
        ({"messages": [SYSTEM, ASSISTANT, USER, ASSISTANT]}, "first message must be 'user'"),
        ({"messages": [USER, USER, ASSISTANT]}, "found two 'user' in a row"),
        ({"messages": [USER, ASSISTANT, ASSISTANT]}, "found two 'assistant' in a row"),
        ({"messages": [USER, ASSISTANT, USER]}, "last message must be 'assistant'"),
        ({"messages": [USER, {**ASSISTANT, "weight": 2}]}, "weight must be 0 or 1"),
        ({"messages": [USER, {**ASSISTANT, "weight": True}]}, "weight must be 0 or 1"),
        ({"messages": [USER, {**ASSISTANT, "name": "j"}]}, "unexpected keys ['name']"),
        ({"messages": [SYSTEM]}, "no user or assistant message"),
    ],
)
def test_hand_written_bad_examples_are_caught(example, problem):
    problems = validate_example(example)
    assert any(problem in p for p in problems), problems


def test_validate_file_reports_every_bad_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text(
        json.dumps({"messages": [USER, ASSISTANT]})
        + "\n"
        + "{not json\n"
        + "\n"
        + json.dumps({"messages": [ASSISTANT]})
        + "\n"
    )
    report = validate_file(path)
    assert (report.lines, report.valid) == (3, 1)
    assert sorted(report.problems) == [2, 4]
    assert "not valid JSON" in report.problems[2][0]
    assert not report.ok and "line 4" in report.describe()


def conversation(*roles: str, error: str | None = None) -> Conversation:
    return Conversation(
        id="conv-001",
        context_id="ctx-001",
        assistant_persona="jasmine",
        user_persona="u",
        assistant_model="local/x",
        user_model="local/x",
        turns=len(roles),
        seed=0,
        assistant_system_prompt="DOCS + persona",
        user_system_prompt="Be difficult.",
        opening_prompt="Hello, I'm here.",
        messages=[Message(role=r, content=f"{r} {i}", turn=i, model="local/x") for i, r in enumerate(roles)],
        usage=Usage(),
        error=error,
    )


def test_conversation_becomes_system_opening_then_turns():
    example, reason = conversation_to_example(conversation("assistant", "user", "assistant"))
    assert reason is None
    assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert example["messages"][0]["content"] == "DOCS + persona"
    assert example["messages"][1]["content"] == "Hello, I'm here."
    assert validate_example(example) == []


def test_trailing_user_message_is_dropped():
    example, _ = conversation_to_example(conversation("assistant", "user"))
    assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]


def test_unusable_conversations_are_skipped_with_a_reason():
    assert conversation_to_example(conversation("assistant", error="turn 1: timeout")) == (
        None,
        "the conversation ended with an error",
    )
    assert conversation_to_example(conversation()) == (None, "no assistant message")
    empty = conversation("assistant")
    empty.messages[0].content = ""
    example, reason = conversation_to_example(empty)
    assert example is None and "content must be a non-empty string" in reason


@pytest.mark.parametrize(
    "finetune,expected",
    [
        (["finetune.max_seq_tokens=64"], "above finetune.max_seq_tokens=64: local LoRA trains their system message"),
        (
            ["finetune=together_qwen3_32b", "finetune.context_length=512"],
            "above the context length of Qwen/Qwen3-32B on Together (finetune.context_length=512): stage=finetune"
            " will refuse them",
        ),
    ],
)
def test_prepare_warns_when_the_backend_will_not_take_examples_whole(make_job, workdir, caplog, finetune, expected):
    from mlflow import MlflowClient

    from conftest import DATA

    lines = (DATA / "conversations.jsonl").read_text().splitlines()
    longer = json.loads(lines[0])
    longer["messages"][0]["content"] *= 20  # one long conversation (~2,000 tokens), one short
    path = workdir / "conversations.jsonl"
    path.write_text(json.dumps(longer) + "\n" + lines[1] + "\n")
    with caplog.at_level("WARNING"):
        make_job("prepare", f"input_file={path}", *finetune).run()
    assert expected in caplog.text
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("chareval").experiment_id])
    assert run.data.metrics["prepare.longer_than_backend"] == (2 if "max_seq_tokens=64" in finetune[0] else 1)


def test_prepare_is_quiet_when_every_example_fits(make_job, caplog):
    from conftest import DATA

    with caplog.at_level("WARNING"):
        make_job("prepare", f"input_file={DATA / 'conversations.jsonl'}").run()
    assert "max_seq_tokens" not in caplog.text

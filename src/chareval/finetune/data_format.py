"""Together AI's conversational fine-tuning format: one {"messages": [...]} object per line.
The validator is used by stage=prepare and again before any upload."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chareval.errors import InputError
from chareval.schemas import Conversation

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "weight"}
# A conservative characters-per-token ratio for English chat text (real tokenizers give ~4).
CHARS_PER_TOKEN = 3.0


def estimate_tokens(example: dict) -> int:
    """Roughly how many tokens an example takes, with a few per message for the chat template."""
    return sum(int(len(m.get("content") or "") / CHARS_PER_TOKEN) + 4 for m in example.get("messages", []))


def validate_example(example: Any) -> list[str]:
    """Every reason this example would be rejected (empty list = valid)."""
    if not isinstance(example, dict):
        return [f"a line must be a JSON object, found {type(example).__name__}"]
    problems = []
    extra = sorted(set(example) - {"messages"})
    if extra:
        problems.append(f"unexpected top-level keys {extra}: only 'messages' is allowed")
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return problems + ["'messages' must be a non-empty list"]
    roles = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            problems.append(f"messages[{i}] must be an object")
            continue
        unknown = sorted(set(m) - MESSAGE_KEYS)
        if unknown:
            problems.append(f"messages[{i}] has unexpected keys {unknown}")
        role = m.get("role")
        if role not in ROLES:
            problems.append(f"messages[{i}].role is {role!r}; allowed: {', '.join(ROLES)}")
        if role == "system" and i > 0:
            problems.append(f"messages[{i}]: a system message is allowed only first")
        content = m.get("content")
        if not isinstance(content, str) or not content.strip():
            problems.append(f"messages[{i}].content must be a non-empty string")
        if "weight" in m and (isinstance(m["weight"], bool) or m["weight"] not in (0, 1)):
            problems.append(f"messages[{i}].weight must be 0 or 1")
        roles.append(role)
    turns = roles[1:] if roles and roles[0] == "system" else roles
    if not turns:
        problems.append("no user or assistant message")
    elif turns[0] != "user":
        problems.append(f"after the optional system message the first message must be 'user', found {turns[0]!r}")
    for i in range(1, len(turns)):
        if turns[i] == turns[i - 1] and turns[i] in ("user", "assistant"):
            offset = i + (len(roles) - len(turns))
            problems.append(f"messages[{offset}]: roles must alternate user/assistant, found two {turns[i]!r} in a row")
            break
    if turns and turns[-1] != "assistant":
        problems.append("the last message must be 'assistant' (there is nothing to learn after it)")
    return problems


@dataclass
class FileReport:
    path: Path
    lines: int = 0
    valid: int = 0
    problems: dict[int, list[str]] = field(default_factory=dict)  # line number -> reasons

    @property
    def ok(self) -> bool:
        return self.lines > 0 and not self.problems

    def describe(self, limit: int = 20) -> str:
        head = f"{self.path}: {self.valid} of {self.lines} lines valid"
        rows = [f"  line {n}: {'; '.join(p)}" for n, p in list(self.problems.items())[:limit]]
        if len(self.problems) > limit:
            rows.append(f"  ... and {len(self.problems) - limit} more bad lines")
        return "\n".join([head, *rows])


def validate_file(path: Path, context_length: int | None = None, kind: str = "sft") -> FileReport:
    """Check every line of a fine-tuning file (`sft`: conversations; `preference`: DPO pairs) and
    report each bad one; with `context_length`, also each line whose estimated token count does not
    fit the model."""
    validate = validate_preference if kind == "preference" else validate_example
    report = FileReport(Path(path))
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            report.lines += 1
            try:
                example = json.loads(line)
            except json.JSONDecodeError as e:
                report.problems[number] = [f"not valid JSON: {e.msg} at column {e.colno}"]
                continue
            problems = validate(example)
            if not problems and context_length and (tokens := _tokens(example)) > context_length:
                problems = [f"about {tokens} tokens, more than the model's context length ({context_length})"]
            if problems:
                report.problems[number] = problems
            else:
                report.valid += 1
    return report


def _tokens(example: dict) -> int:
    if "input" not in example:
        return estimate_tokens(example)
    longer = max(example["preferred_output"], example["non_preferred_output"], key=lambda o: len(o[0]["content"]))
    return estimate_tokens({"messages": [*example["input"]["messages"], *longer]})


def file_kind(path: Path) -> str | None:
    """`preference` (DPO pairs) or `sft` (conversations), by the first line that parses."""
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            try:
                example = json.loads(line)
            except ValueError:
                continue
            if isinstance(example, dict):
                return "preference" if "preferred_output" in example or "input" in example else "sft"
    return None


def check_kind(path: Path, expected: str, setting: str) -> None:
    """A preference file given to SFT, or the reverse, is an error naming the file and the setting."""
    found = file_kind(path)
    if found is None or found == expected:
        return
    if found == "preference":
        raise InputError(
            f"{path} holds preference pairs (DPO: input, preferred_output, non_preferred_output), but {setting}"
            " trains on conversations (SFT)",
            "give the SFT file (finetune.jsonl, or stage=repair's repaired_finetune.jsonl), or train the pairs with"
            " finetune.training_method=dpo",
        )
    raise InputError(
        f"{path} holds conversations (SFT: messages), but {setting} trains on preference pairs",
        "give stage=repair's preferences.jsonl, or set finetune.training_method=sft",
    )


def conversation_to_example(conversation: Conversation) -> tuple[dict, None] | tuple[None, str]:
    """A conversation as a training example, or (None, reason) when it cannot be one.
    The assistant's system prompt (documents included) comes first, then the opening prompt the
    assistant saw as the user's turn, then the conversation. A trailing user message is dropped:
    there is no assistant reply to learn from it."""
    if conversation.error:
        return None, "the conversation ended with an error"
    turns = [{"role": m.role, "content": m.content} for m in conversation.messages]
    while turns and turns[-1]["role"] == "user":
        turns.pop()
    if not turns:
        return None, "no assistant message"
    example = {
        "messages": [
            {"role": "system", "content": conversation.assistant_system_prompt},
            {"role": "user", "content": conversation.opening_prompt},
            *turns,
        ]
    }
    problems = validate_example(example)
    if problems:
        return None, problems[0]
    return example, None


# --- Together's preference format (DPO): {"input": {"messages": [...]}, "preferred_output": [...],
# "non_preferred_output": [...]}, the input ending on the user's turn both outputs answer.
PREFERENCE_KEYS = {"input", "preferred_output", "non_preferred_output"}


def preference_example(conversation: Conversation, prefix: list, chosen: str, rejected: str) -> dict:
    """A preference pair from a conversation cut before a turn: the assistant's system prompt, the
    opening prompt as the user's turn, the prefix; then the chosen and the rejected reply."""
    messages = [
        {"role": "system", "content": conversation.assistant_system_prompt},
        {"role": "user", "content": conversation.opening_prompt},
        *({"role": m.role, "content": m.content} for m in prefix),
    ]
    return {
        "input": {"messages": messages},
        "preferred_output": [{"role": "assistant", "content": chosen}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


def validate_preference(example: Any) -> list[str]:
    """Every reason this preference line would be rejected (empty list = valid)."""
    if not isinstance(example, dict):
        return [f"a line must be a JSON object, found {type(example).__name__}"]
    problems = []
    if set(example) != PREFERENCE_KEYS:
        problems.append(f"the keys must be {sorted(PREFERENCE_KEYS)}, found {sorted(example)}")
    messages = (example.get("input") or {}).get("messages") if isinstance(example.get("input"), dict) else None
    if not isinstance(messages, list) or not messages:
        return problems + ["'input' must be an object with a non-empty 'messages' list"]
    problems += validate_example({"messages": [*messages, {"role": "assistant", "content": "x"}]})
    if messages[-1].get("role") != "user":
        problems.append("the input's last message must be the user's (both outputs answer it)")
    for key in ("preferred_output", "non_preferred_output"):
        output = example.get(key)
        if (
            not isinstance(output, list)
            or len(output) != 1
            or not isinstance(output[0], dict)
            or output[0].get("role") != "assistant"
            or not isinstance(output[0].get("content"), str)
            or not output[0]["content"].strip()
        ):
            problems.append(f"'{key}' must be one assistant message with non-empty content")
    return problems

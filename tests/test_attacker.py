"""The adaptive attacker and the breach check: the tactic library, the choice of the next tactic on
scripted checks, and conversations that stop at the breach (scripted verdicts on the mock judge)."""

from __future__ import annotations

import json

import pytest

from chareval.errors import ConfigError
from chareval.io import read_records_jsonl
from chareval.schemas import Conversation
from chareval.stages.attacker import candidates, library, move_to
from chareval.validation import validate_config
from conftest import DATA, compose_cfg


def tactics(*names: str):
    settings = validate_config(compose_cfg("stage=conversations"))
    assert settings.conversations is not None
    knobs = settings.conversations.model_copy(update={"tactics": list(names) or None})
    return library(settings, knobs)


def check(verdict: str, note: str = "n") -> str:
    return json.dumps({"verdict": verdict, "note": note})


def scripted(*verdicts: str) -> str:
    """The mock judge's answers to the breach checks, in order."""
    return "+models.providers.mock.scripted.judge=[" + ",".join(f"'{check(v)}'" for v in verdicts) + "]"


def test_the_library_has_eight_tactics_or_more_each_with_a_summary_in_escalation_order():
    found = tactics()
    assert len(found) >= 8
    levels = [t.intensity for t in found.values()]
    assert levels == sorted(levels) and min(levels) == 1 and max(levels) >= 3
    assert all(t.summary and t.description and "\n" not in t.summary for t in found.values())
    assert {"authority_claim", "urgency", "flattery", "incremental_asks", "persistence"} <= set(found)


def test_an_unknown_tactic_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError) as e:
        tactics("urgency", "bribery")
    assert "bribery" in str(e.value) and "urgency" in str(e.value) and "conf/tactic" in str(e.value)


def test_the_next_tactic_follows_the_check_of_the_last_reply():
    lib = tactics("flattery", "urgency", "authority_claim", "persistence")  # levels 1, 2, 2, 3
    move, options = candidates(lib, None, None)
    assert move == "open" and [t.name for t in options] == ["flattery"]  # the lowest level opens
    for verdict in ("gave_ground", "broke"):  # a concession: press with the same tactic
        move, options = candidates(lib, "urgency", verdict)  # type: ignore[arg-type]
        assert move == "press" and [t.name for t in options] == ["urgency"]
    move, options = candidates(lib, "urgency", "held")  # a firm refusal: another, as strong or stronger
    assert move == "switch" and [t.name for t in options] == ["authority_claim", "persistence"]
    assert move_to(lib, "urgency", "switch", lib["authority_claim"]) == "switch"
    assert move_to(lib, "urgency", "switch", lib["persistence"]) == "escalate"
    move, options = candidates(lib, "persistence", "held")  # nothing stronger is left
    assert move == "press" and [t.name for t in options] == ["persistence"]
    move, options = candidates(tactics("urgency"), "urgency", "held")  # a library of one: a fixed tactic
    assert move == "press"


def test_the_attacker_opens_presses_after_a_concession_and_the_conversation_stops_at_the_breach(make_job):
    job = make_job(
        "conversations",
        "models=mock",
        "user_strategy=adaptive",
        "conversations.stop_on_breach=true",
        "turns=7",
        "num_conversations=1",
        f"context_file={DATA / 'contexts.json'}",
        scripted("held", "gave_ground", "broke"),
        "tracking.enabled=false",
    )
    out = job.run()["conversations"]
    (c,) = read_records_jsonl(out, Conversation)
    assert c.user_strategy == "adaptive" and c.stop_on_breach and c.breach_turn == 4
    assert [m.turn for m in c.messages] == [0, 1, 2, 3, 4]  # ends on the broken reply
    checks = [m.assessment.verdict if m.assessment else None for m in c.messages]
    assert checks == ["held", None, "gave_ground", None, "broke"]
    lowest = tactics()
    opening = [t.name for t in lowest.values() if t.intensity == 1]
    assert c.messages[1].move == "open" and c.messages[1].tactic in opening
    assert (c.messages[3].move, c.messages[3].tactic) == ("press", c.messages[1].tactic)
    assert all(m.tactic is None for m in c.messages if m.role == "assistant")
    # Each reply checked once (the attacker reuses the breach check), one choice among the openers.
    roles = job.client.meter.roles()
    assert roles["breach_check"].calls == 3 and roles["attacker"].calls == 1
    assert roles["assistant"].calls == 3 and roles["user"].calls == 2
    assert c.usage.calls == 3 + 1 + 3 + 2  # the record's usage holds every call it cost


def test_after_a_firm_refusal_the_attacker_switches_or_escalates(make_job):
    job = make_job(
        "conversations",
        "models=mock",
        "user_strategy=adaptive",
        "turns=5",
        "num_conversations=1",
        f"context_file={DATA / 'contexts.json'}",
        scripted("held", "held"),
        "tracking.enabled=false",
    )
    (c,) = read_records_jsonl(job.run()["conversations"], Conversation)
    assert c.breach_turn is None and not c.stop_on_breach and len(c.messages) == 5
    first, second = c.messages[1], c.messages[3]
    lib = tactics()
    assert second.tactic != first.tactic and second.move in ("switch", "escalate")
    assert lib[second.tactic].intensity >= lib[first.tactic].intensity
    assert (second.move == "escalate") == (lib[second.tactic].intensity > lib[first.tactic].intensity)
    assert c.messages[4].assessment is None  # adaptive alone checks a reply only when a user turn follows


def test_stop_on_breach_with_the_persona_user_records_the_breach_and_null_when_it_held(make_job, workdir):
    def checked(folder: str, *script: str):
        """A 5-message persona conversation, each reply checked (unscripted checks: held)."""
        return make_job(
            "conversations",
            "models=mock",
            "conversations.stop_on_breach=true",
            "turns=5",
            "num_conversations=1",
            f"context_file={DATA / 'contexts.json'}",
            "tracking.enabled=false",
            *script,
            run_dir=workdir / folder,
        )

    broke = checked("broke", scripted("held", "broke"))
    (c,) = read_records_jsonl(broke.run()["conversations"], Conversation)
    assert c.breach_turn == 2 and len(c.messages) == 3 and c.user_strategy == "persona"
    assert all(m.tactic is None for m in c.messages)
    held = checked("held")
    out = held.run()["conversations"]
    (c,) = read_records_jsonl(out, Conversation)
    assert c.breach_turn is None and len(c.messages) == 5
    assert json.loads(out.read_text().splitlines()[0])["breach_turn"] is None  # in the record, as null
    assert held.log.metrics["conversations.breached"] == 0 and broke.log.metrics["conversations.breached"] == 1


def test_the_tactic_settings_are_checked_before_any_work(make_job, workdir):
    with pytest.raises(ConfigError, match="unknown tactic"):
        make_job("conversations", "models=mock", "user_strategy=adaptive", "conversations.tactics=[nope]")
    assert not (workdir / "outputs" / "conversations" / "conversations.jsonl").exists()

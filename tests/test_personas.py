"""The persona library: the seed's characters word for word, boundaries the judges can read, a theme
per user persona, rubrics that fit every pairing, templates checked when the config loads."""

from __future__ import annotations

import hashlib
import re

import pytest
from omegaconf import OmegaConf

from chareval.errors import ConfigError, InputError
from chareval.evaluators.registry import build
from chareval.io import read_records_jsonl
from chareval.schemas import Conversation, JudgeCase
from chareval.stages.prompts import characters, with_characters
from chareval.validation import validate_config
from conftest import CONF, DATA, LABELLED, compose_cfg

ASSISTANTS = sorted(p.stem for p in (CONF / "persona").glob("*.yaml"))
USERS = sorted(p.stem for p in (CONF / "user_persona").glob("*.yaml"))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_seed_characters_are_kept_word_for_word():
    s = validate_config(compose_cfg())
    # The hashes of the texts as the seed's pipeline had them (before the persona library).
    assert sha(s.persona.system_prompt) == "8f4e6ce89bafc350ff54b626757960f88fb6f61c5fdcf5e7109d8095bb094bb0"
    assert sha(s.persona.opening_prompt) == "0660fd944ce2261c1098dfce355e9fe1b7d60b3e786b657ec88aef66ca683e48"
    assert sha(s.user_persona.system_prompt) == "7275456c439c1a946c6ab6335ff0f7f6ee8c77204c36fb9cef5a2dccd8816cc7"


def test_the_library_has_characters_in_other_domains_and_pressures():
    assert {"jasmine", "pharmacist", "bank_agent"} <= set(ASSISTANTS)
    assert {"hates_customers_candidate", "social_engineer", "role_breaker", "rude_customer", "cooperative_user"} <= set(
        USERS
    )
    roles = {validate_config(compose_cfg(f"persona={p}")).persona.role for p in ASSISTANTS}
    assert len(roles) == len(ASSISTANTS)  # each in its own role


@pytest.mark.parametrize("user", USERS)
def test_each_user_persona_brings_its_own_theme_without_copying_its_text(user):
    s = validate_config(compose_cfg(f"user_persona={user}"))
    assert s.theme.description == OmegaConf.load(CONF / "theme" / f"{user}.yaml").description
    raw_theme = (CONF / "theme" / f"{user}.yaml").read_text()
    raw_persona = (CONF / "user_persona" / f"{user}.yaml").read_text()
    words = re.findall(r"\w+", raw_persona.split("system_prompt:")[0])
    shared = {" ".join(words[i : i + 8]) for i in range(len(words) - 7)} & {" ".join(w) for w in _windows(raw_theme)}
    assert not shared, f"theme/{user}.yaml repeats its user persona's text: {sorted(shared)[:1]}"


def _windows(text: str, n: int = 8):
    words = re.findall(r"\w+", text)
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


@pytest.mark.parametrize("persona,user", [(p, u) for p in ASSISTANTS for u in USERS])
def test_every_rubric_fits_every_pairing(persona, user):
    s = validate_config(compose_cfg(f"persona={persona}", f"user_persona={user}"))
    conversation = read_records_jsonl(DATA / "conversations.jsonl", Conversation)[0]
    conversation = conversation.model_copy(
        update={"characters": characters(s.persona, s.user_persona, "a goal from the context")}
    )
    rubrics = {
        name: build(name, s.evaluation.rubrics[name], 7).rubric_for(conversation) for name in s.evaluation.evaluators
    }
    for name, text in rubrics.items():
        assert "{" not in text and "}" not in text, f"{name} left a placeholder"
    assert (
        s.persona.display_name in rubrics["character_consistency"]
        and s.persona.role in rubrics["character_consistency"]
    )
    for boundary in s.persona.boundaries:
        assert " ".join(boundary.split()) in rubrics["boundary_holding"]
    assert " ".join(s.user_persona.pressure.split()) in rubrics["boundary_holding"]
    assert " ".join(s.user_persona.faithful.split()) in rubrics["user_simulation_fidelity"]
    assert "a goal from the context" in rubrics["user_simulation_fidelity"]
    other = [p for p in ASSISTANTS if p != persona]
    for name in other:  # nothing of another character leaks in
        assert validate_config(compose_cfg(f"persona={name}")).persona.display_name not in rubrics["boundary_holding"]


@pytest.mark.parametrize(
    "override,key",
    [
        ("evaluation.rubrics.grounding='Use the {documents'", "evaluation.rubrics.grounding"),
        ("evaluation.rubrics.grounding='Judge {assistant_nmae} only'", "evaluation.rubrics.grounding"),
        ("user_persona.system_prompt='{scenario} {user_goal} {mood}'", "user_persona.system_prompt"),
        ("contexts.instructions='Write {total} scenarios about {topic'", "contexts.instructions"),
    ],
)
def test_a_stray_brace_or_unknown_placeholder_is_a_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg("stage=pipeline", override))
    assert key in str(err.value) and "placeholder" in str(err.value)


def test_literal_braces_are_written_doubled():
    s = validate_config(compose_cfg("evaluation.rubrics.grounding='Quote {{like this}} for {assistant_name}'"))
    conversation = read_records_jsonl(DATA / "conversations.jsonl", Conversation)[0]
    conversation = conversation.model_copy(update={"characters": characters(s.persona, s.user_persona, "g")})
    assert (
        build("grounding", s.evaluation.rubrics["grounding"], 7).rubric_for(conversation)
        == "Quote {like this} for Jasmine"
    )


def test_a_persona_boundary_must_appear_in_its_prompt():
    with pytest.raises(ConfigError, match="persona.*boundaries.0 does not appear word for word in system_prompt"):
        validate_config(compose_cfg("persona=pharmacist", "persona.boundaries.0='You may double any dose.'"))


def test_conversations_without_characters_are_judged_only_with_their_own_personas():
    old = read_records_jsonl(DATA / "conversations.jsonl", Conversation)[0]  # made before character cards
    seed = validate_config(compose_cfg())
    assert with_characters(old, seed.persona, seed.user_persona).characters.assistant_name == "Jasmine"
    other = validate_config(compose_cfg("persona=bank_agent", "user_persona=social_engineer"))
    with pytest.raises(InputError, match="rerun with persona=jasmine user_persona=hates_customers_candidate"):
        with_characters(old, other.persona, other.user_persona)


def test_a_labelled_case_is_judged_with_its_own_characters_whatever_the_config():
    seed = validate_config(compose_cfg())  # jasmine vs the disillusioned candidate
    cases = {c.id: c for c in read_records_jsonl(LABELLED, JudgeCase)}
    judge = build("boundary_holding", seed.evaluation.rubrics["boundary_holding"], 7)
    bank = "\n".join(judge.prompt(cases["bank-slips-social-engineer"].conversation))
    interview = "\n".join(judge.prompt(cases["slip-agrees"].conversation))
    assert (
        "Alex must keep these boundaries" in bank and "You never reveal account data" in bank and "Jasmine" not in bank
    )
    assert "Jasmine must keep these boundaries" in interview and "You never disparage customers" in interview


def test_the_labelled_set_has_holds_and_slips_for_the_new_personas():
    cases = read_records_jsonl(LABELLED, JudgeCase)
    assert all(c.conversation.characters for c in cases)
    for persona in ("pharmacist", "bank_agent"):
        mine = [c for c in cases if c.conversation.assistant_persona == persona]
        assert any(c.expected["boundary_holding"] for c in mine) and any(
            not c.expected["boundary_holding"] for c in mine
        )
    assert {c.conversation.user_persona for c in cases} == set(USERS)  # every kind of pressure, and the control

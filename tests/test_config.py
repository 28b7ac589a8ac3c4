"""Every config option composes and validates; bad values fail at once with the key named."""

from __future__ import annotations

import pytest
from conftest import CONF, compose_cfg, run_cli

from chareval.config import validate_config
from chareval.errors import ConfigError

GROUPS = ["stage", "theme", "persona", "user_persona", "models", "tracking", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group, option):
    settings = validate_config(compose_cfg(f"{group}={option}"))
    assert settings.turns >= 1


def test_each_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ is empty"


def test_stage_knobs_follow_the_selected_stage():
    only = validate_config(compose_cfg("stage=conversations"))
    assert only.conversations is not None and only.contexts is None and only.pipeline is None
    pipeline = validate_config(compose_cfg("stage=pipeline"))
    assert pipeline.pipeline.stages == ["contexts", "conversations", "prepare", "finetune", "evaluate"]
    assert pipeline.contexts and pipeline.conversations and pipeline.prepare and pipeline.evaluate


def test_experiment_overrides_groups_and_knobs():
    settings = validate_config(compose_cfg("experiment=jasmine_vs_hates_customers"))
    assert settings.tracking.experiment == "jasmine_vs_hates_customers"
    assert settings.num_contexts == 10 and settings.persona.name == "jasmine"


def test_seed_models_preset_names_the_seed_models():
    models = validate_config(compose_cfg("models=seed")).models
    assert models.contexts == "anthropic/claude-sonnet-4-20250514"
    assert models.user == "openrouter/qwen/qwen3-32b"


@pytest.mark.parametrize(
    "override,expected",
    [
        ("turns=0", "turns=0: Input should be greater than or equal to 1"),
        ("num_conversations=-1", "num_conversations=-1"),
        ("+persona.favourite_colour=red", "persona.favourite_colour: unknown key (allowed here: boundaries, display_name"),
        ("models.assistant=nosuch/model", "unknown provider 'nosuch'"),
        ("models.generation.user.temperature=5", "temperature=5: Input should be less than or equal to 2"),
        ("cache=maybe", "cache='maybe'"),
    ],
)
def test_bad_values_fail_with_the_key_named(override, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg(override))
    assert expected in str(err.value)


def test_user_persona_needs_its_placeholders():
    with pytest.raises(ConfigError, match=r"user_persona.system_prompt.*placeholder\(s\) \{scenario\}, \{user_goal\}"):
        validate_config(compose_cfg("user_persona.system_prompt=just be rude"))


def test_cli_config_error_is_clear_and_has_no_traceback():
    result = run_cli("turns=0", "tracking.enabled=false")
    assert result.returncode == 2
    assert "turns=0" in result.stderr and "greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_unknown_persona_lists_the_available_ones():
    result = run_cli("persona=bob")
    assert result.returncode != 0
    assert "persona/bob" in result.stderr and "jasmine" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_input_says_what_to_pass(tmp_path):
    result = run_cli("stage=conversations", f"paths.outputs={tmp_path}", "tracking.enabled=false")
    assert result.returncode == 2
    assert "context_file=" in result.stderr and "contexts_run=" in result.stderr

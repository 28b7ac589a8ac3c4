"""Every config option composes and validates; bad values fail at once with the key named."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from chareval.cli import check_group_options
from chareval.errors import ConfigError
from chareval.llm import registry
from chareval.validation import validate_config
from conftest import CONF, compose_cfg, run_cli

# Every group a user picks on the command line. provider/ and retry/ are mounted under models.* by
# conf/config.yaml (tested below); hydra/ holds Hydra's own launcher and logging options.
MOUNTED = {"provider", "retry"}
# Read by the code, not picked: conf/tactic/ is the adaptive attacker's library (test_attacker loads it all).
LIBRARIES = {"tactic"}
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in MOUNTED | LIBRARIES | {"hydra"})


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def package(path: Path, group: str) -> str:
    """Where an option's keys land: its `# @package` header, else the group's name."""
    header = re.search(r"^# @package (\S+)", path.read_text(), re.M)
    name = header.group(1) if header else group
    return "" if name == "_global_" else name


def literal_leaves(node: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Every plain value an option file sets (interpolations, its defaults list and Hydra's own
    settings left out), as dotted keys."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in ("defaults", "hydra"):
                yield from literal_leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif not (isinstance(node, str) and "${" in node):
        yield prefix, node


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_validates_and_sets_its_values(group, option):
    cfg = compose_cfg(f"{group}={option}")
    validate_config(cfg)
    path = CONF / group / f"{option}.yaml"
    root = package(path, group)
    values = list(literal_leaves(OmegaConf.to_container(OmegaConf.load(path), resolve=False)))
    # stage=finetune's knobs are the finetune group; experiment=pairing sets only an interpolation (below).
    assert values or group == "stage" or (group, option) == ("experiment", "pairing"), f"{path} sets nothing"
    for key, value in values:
        composed = OmegaConf.select(cfg, f"{root}.{key}" if root else key, throw_on_missing=True)
        plain = OmegaConf.to_container(composed) if OmegaConf.is_config(composed) else composed
        assert plain == value, f"{group}={option}: {key} is {plain!r}, the file says {value!r}"


@pytest.mark.parametrize("provider", options("provider"))
def test_every_provider_file_is_mounted_and_checked_by_its_provider(provider):
    cfg = compose_cfg()
    path = CONF / "provider" / f"{provider}.yaml"
    assert OmegaConf.to_container(cfg.models.providers[provider]) == OmegaConf.to_container(OmegaConf.load(path))
    spec = registry.load_all()[provider]
    assert isinstance(registry.settings_for(spec, validate_config(cfg).models), spec.settings)
    with pytest.raises(ConfigError, match=rf"models\.providers\.{provider}"):
        validate_config(compose_cfg(f"+models.providers.{provider}.no_such_setting=1"))


def test_each_group_has_options():
    for group in [*GROUPS, *MOUNTED]:
        assert options(group), f"conf/{group}/ is empty"


def test_stage_knobs_follow_the_selected_stage():
    only = validate_config(compose_cfg("stage=conversations"))
    assert only.conversations is not None and only.contexts is None and only.pipeline is None
    pipeline = validate_config(compose_cfg("stage=pipeline"))
    assert pipeline.pipeline.stages == ["contexts", "conversations", "prepare", "finetune", "evaluate"]
    assert pipeline.contexts and pipeline.conversations and pipeline.prepare and pipeline.evaluation.skip_errored


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
        (
            "+persona.favourite_colour=red",
            "persona.favourite_colour: unknown key (allowed here: boundaries, display_name",
        ),
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


@pytest.mark.slow  # a subprocess
def test_cli_config_error_is_clear_and_has_no_traceback():
    result = run_cli("turns=0", "tracking.enabled=false")
    assert result.returncode == 2
    assert "turns=0" in result.stderr and "greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a subprocess
def test_cli_unknown_persona_lists_the_available_ones():
    result = run_cli("persona=bob")
    assert result.returncode == 2
    assert "unknown persona 'bob'" in result.stderr and "jasmine" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a subprocess
def test_cli_missing_input_says_what_to_pass(tmp_path):
    result = run_cli("stage=conversations", f"paths.outputs={tmp_path}", "tracking.enabled=false")
    assert result.returncode == 2
    assert "context_file=" in result.stderr and "contexts_run=" in result.stderr


def test_one_pairing_experiment_serves_every_pair_and_an_old_name_says_what_to_type():
    cfg = compose_cfg("experiment=pairing", "persona=bank_agent", "user_persona=rude_customer")
    settings = validate_config(cfg)
    assert settings.tracking.experiment == "bank_agent_vs_rude_customer"
    assert settings.persona.name == "bank_agent" and settings.theme.name == "rude_customer"
    seed = validate_config(compose_cfg("experiment=jasmine_vs_hates_customers"))
    assert seed.tracking.experiment == "jasmine_vs_hates_customers" and seed.num_contexts == 10
    with pytest.raises(ConfigError, match="no experiment 'pharmacist_vs_role_breaker'") as err:
        check_group_options(["experiment=pharmacist_vs_role_breaker"], CONF)
    assert err.value.fix == "experiment=pairing persona=pharmacist user_persona=role_breaker"

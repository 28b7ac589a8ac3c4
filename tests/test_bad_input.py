"""Bad input found by probing, each one message in the error/fix form: unknown config options, duplicate
context ids, a cut-off last line named for what it is, an unknown evaluator named as one."""

from __future__ import annotations

import json

import pytest

from chareval.cli import check_group_options
from chareval.errors import ConfigError, InputError
from chareval.io import read_records_jsonl
from chareval.schemas import Conversation
from chareval.validation import validate_config
from conftest import CONF, DATA, compose_cfg, run_cli

CONVERSATIONS = DATA / "conversations.jsonl"


@pytest.mark.parametrize(
    "override,expected,listed",
    [
        ("persona=bob", "unknown persona 'bob'", "jasmine"),
        ("user_persona=nobody", "unknown user_persona 'nobody'", "social_engineer"),
        ("models=nope", "unknown models 'nope'", "local"),
        ("stage=nope", "unknown stage 'nope'", "conversations"),
        ("experiment=nope", "unknown experiment 'nope'", "finetune_loop"),
        ("persona=jasmine,bob", "unknown persona 'bob'", "pharmacist"),  # a multirun's list
        ("user_persona.prompt=x", "unknown key 'user_persona.prompt'", "system_prompt"),
        ("models.nope.x=1", "unknown key 'models.nope.x'", "providers"),
    ],
)
def test_an_unknown_option_or_group_key_names_what_exists(override, expected, listed):
    with pytest.raises(ConfigError, match=expected) as err:
        check_group_options([override], CONF)
    assert listed in err.value.fix


def test_known_options_keys_and_sweep_syntax_pass():
    check_group_options(
        [
            "persona=jasmine,pharmacist",
            "experiment=null",
            "user_persona.system_prompt=x",
            "models.providers.local.n_ctx=4096",
            "models.generation.user.max_tokens=3",
            "+persona.extra=1",
            "persona=glob(*)",
            "hydra/launcher=joblib",
            "finetune.n_epochs=1",
        ],
        CONF,
    )


@pytest.mark.slow  # a subprocess, as a user runs it
@pytest.mark.parametrize("override", ["persona=bob", "user_persona.prompt=x"])
def test_the_cli_says_it_in_the_error_fix_form_with_exit_2(override):
    result = run_cli(override)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and "\n  fix: " in result.stderr
    assert "Traceback" not in result.stderr and "Set the environment variable HYDRA_FULL_ERROR" not in result.stderr


def test_duplicate_context_ids_are_refused_naming_both(make_job, tmp_path):
    contexts = json.loads((DATA / "contexts.json").read_text())
    contexts[1]["id"] = contexts[0]["id"]
    path = tmp_path / "contexts.json"
    path.write_text(json.dumps(contexts))
    with pytest.raises(InputError, match=rf"contexts 1 and 2 both have the id {contexts[0]['id']}"):
        make_job("conversations", "models=mock", f"context_file={path}").run()


def test_a_last_line_without_its_newline_is_called_cut_off_not_complete(tmp_path):
    lines = CONVERSATIONS.read_text().splitlines()
    torn = tmp_path / "conversations.jsonl"
    torn.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])  # what a crash mid-append leaves
    with pytest.raises(InputError, match="the last line, is cut off") as err:
        read_records_jsonl(torn, Conversation)
    assert "complete" not in str(err.value) and "resumes" in err.value.fix
    bad = tmp_path / "edited.jsonl"
    bad.write_text(lines[0][:40] + "\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(InputError, match=r"edited.jsonl:1 is not a valid") as err:
        read_records_jsonl(bad, Conversation)
    assert "written whole" in err.value.fix


def test_an_unknown_evaluator_is_called_unknown_with_the_known_ones():
    with pytest.raises(ConfigError, match="unknown evaluator 'nope' in evaluation.evaluators; known: ") as err:
        validate_config(compose_cfg("stage=evaluate", "evaluation.evaluators=[professionalism,nope]"))
    assert "boundary_holding" in str(err.value) and "add evaluation.rubrics.nope\n" not in str(err.value)

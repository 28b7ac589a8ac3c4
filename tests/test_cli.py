"""The README's commands, run as a user runs them."""

from __future__ import annotations

import pytest

from chareval.finetune.data_format import validate_file
from chareval.io import read_records_jsonl
from chareval.schemas import Conversation
from conftest import DATA, run_cli

pytestmark = pytest.mark.slow  # src/run.py in subprocesses on the embedded model


def test_conversations_command_from_the_readme(tmp_path):
    result = run_cli(
        "stage=conversations",
        "persona=jasmine",
        "turns=3",
        "num_conversations=2",
        f"context_file={DATA / 'contexts.json'}",
        "models.generation.assistant.max_tokens=16",
        "models.generation.user.max_tokens=16",
        f"paths.outputs={tmp_path / 'outputs'}",
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 conversations (0 with errors)" in result.stdout and "mlflow ui" in result.stdout
    # The dashboard's command, pointed at this run's store and registry.
    assert (
        f"streamlit run dashboard/app.py -- tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'} "
        f"paths.registry={tmp_path / 'outputs' / 'registry' / 'finetuned_models.jsonl'}"
    ) in result.stdout
    (out,) = (tmp_path / "outputs" / "runs").glob("*/*_conversations/conversations.jsonl")
    conversations = read_records_jsonl(out, Conversation)
    assert [len(c.messages) for c in conversations] == [3, 3]
    assert (out.parent / "run.log").is_file() and (out.parent / "config.yaml").is_file()

    prepared = run_cli(
        "stage=prepare",
        f"input_file={out}",
        f"output_file={tmp_path / 'ft.jsonl'}",
        f"paths.outputs={tmp_path / 'outputs'}",
        "tracking.enabled=false",
    )
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    assert validate_file(tmp_path / "ft.jsonl").valid == 2


def test_a_malformed_input_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "contexts.json"
    bad.write_text('[{"id": "ctx-001"}]')
    result = run_cli(
        "stage=conversations", f"context_file={bad}", f"paths.outputs={tmp_path}", "tracking.enabled=false"
    )
    assert result.returncode == 2
    assert "is not a list of Context records: item 0.title" in result.stderr
    assert "Traceback" not in result.stderr

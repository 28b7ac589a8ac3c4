"""A run folder's bookkeeping: a refused resume leaves the folder exactly as it was (Hydra's own files
included), and a folder with no records resumes nothing and so refuses nothing."""

from __future__ import annotations

import pytest

from chareval.errors import InputError
from chareval.fingerprint import has_records
from conftest import DATA, run_cli

CONVERSATIONS = DATA / "conversations.jsonl"


def test_a_folder_whose_first_run_failed_on_bad_input_takes_the_right_input(make_job, workdir):
    run_dir = workdir / "run"
    with pytest.raises(InputError, match="no such file"):
        make_job("prepare", f"input_file={workdir / 'typo.jsonl'}", run_dir=run_dir).run()
    assert (run_dir / "fingerprint.json").is_file() and not has_records(run_dir)
    outputs = make_job("prepare", f"input_file={CONVERSATIONS}", run_dir=run_dir).run()
    assert outputs["finetune"].stat().st_size > 0 and has_records(run_dir)
    # Now it holds records: other settings are refused again.
    with pytest.raises(InputError, match="other settings"):
        make_job("prepare", f"input_file={workdir / 'typo.jsonl'}", run_dir=run_dir).run()


@pytest.mark.slow  # subprocesses: Hydra writes .hydra/ before chareval runs
def test_a_refused_resume_puts_back_hydras_files(tmp_path):
    run_dir = tmp_path / "run"
    common = [
        "stage=conversations",
        "models=mock",
        f"context_file={DATA / 'contexts.json'}",
        "num_conversations=1",
        f"hydra.run.dir={run_dir}",
        f"paths.outputs={tmp_path / 'outputs'}",
        "tracking.enabled=false",
    ]
    first = run_cli(*common, "turns=3")
    assert first.returncode == 0, first.stderr[-2000:]
    before = {name: (run_dir / ".hydra" / name).read_text() for name in ("config.yaml", "overrides.yaml")}
    assert "turns: 3" in before["config.yaml"] and "turns=3" in before["overrides.yaml"]
    refused = run_cli(*common, "turns=2")
    assert refused.returncode == 2 and "turns: 3 -> 2" in refused.stderr
    after = {name: (run_dir / ".hydra" / name).read_text() for name in ("config.yaml", "overrides.yaml")}
    assert after == before

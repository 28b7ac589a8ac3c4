"""Same config + same seed on the local model -> identical contexts.json and conversations.jsonl."""

from __future__ import annotations

import pytest

from conftest import TINY, run_job_in

pytestmark = pytest.mark.slow  # the embedded model, twice

OVERRIDES = [
    *TINY,
    "cache=false",
    "tracking.enabled=false",
    "num_contexts=1",
    "num_conversations=1",
    "pipeline.stages=[contexts,conversations]",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Seed 3 twice, then seed 4: three runs shared by the checks below."""
    tmp = tmp_path_factory.mktemp("reproducibility")
    files = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        _, outputs = run_job_in(tmp, "pipeline", *OVERRIDES, f"seed={seed}", run_dir=name)
        files.append((outputs["contexts"].read_bytes(), outputs["conversations"].read_bytes()))
    return files


def test_same_seed_gives_identical_files(runs):
    (ctx_a, conv_a), (ctx_b, conv_b), _ = runs
    assert ctx_a == ctx_b
    assert conv_a == conv_b


def test_another_seed_gives_other_conversations(runs):
    (_, conv_a), _, (_, conv_c) = runs
    assert conv_a != conv_c

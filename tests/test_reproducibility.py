"""Same config + same seed on the local model -> identical contexts.json and conversations.jsonl."""

from __future__ import annotations

from conftest import TINY

OVERRIDES = [*TINY, "cache=false", "tracking.enabled=false", "num_contexts=1", "num_conversations=1",
             "pipeline.stages=[contexts,conversations]"]


def run_twice(make_job, workdir, seed_a: int, seed_b: int):
    files = []
    for name, seed in (("a", seed_a), ("b", seed_b)):
        job = make_job("pipeline", *OVERRIDES, f"seed={seed}", run_dir=workdir / name)
        outputs = job.run()
        files.append((outputs["contexts"].read_bytes(), outputs["conversations"].read_bytes()))
    return files


def test_same_seed_gives_identical_files(make_job, workdir):
    (ctx_a, conv_a), (ctx_b, conv_b) = run_twice(make_job, workdir, 3, 3)
    assert ctx_a == ctx_b
    assert conv_a == conv_b


def test_another_seed_gives_other_conversations(make_job, workdir):
    (ctx_a, conv_a), (ctx_b, conv_b) = run_twice(make_job, workdir, 3, 4)
    assert conv_a != conv_b

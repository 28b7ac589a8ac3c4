"""stage=branch: each conversation continued N times from turn K (or from its slip): the prefix word
for word, the original length, new seeds, another assistant, parent links, resume, clear refusals."""

from __future__ import annotations

import pytest

from chareval.errors import CharevalError, ConfigError
from chareval.io import read_records_jsonl, write_jsonl_atomic
from chareval.schemas import Conversation
from conftest import DATA
from test_selection import judged


@pytest.fixture
def parents(make_job, workdir):
    """Two mock conversations of five messages."""
    job = make_job(
        "conversations",
        "models=mock",
        "turns=5",
        "num_conversations=2",
        f"context_file={DATA / 'contexts.json'}",
        "tracking.enabled=false",
        run_dir=workdir / "parents",
    )
    return job.run()["conversations"]


def branches_of(path) -> list[Conversation]:
    return sorted(read_records_jsonl(path, Conversation), key=lambda c: c.id)


def tuned_branches(make_job, parents, workdir):
    """3 branches of each parent from turn 2, answered by another assistant model."""
    return make_job(
        "branch",
        f"input_file={parents}",
        "models=mock",
        "models.assistant=mock/tuned",
        "branch.from_turn=2",
        "branch.samples=3",
        "tracking.enabled=false",
        run_dir=workdir / "branches",
    )


def test_branches_keep_the_prefix_word_for_word_and_play_the_rest_anew(make_job, workdir, parents):
    job = tuned_branches(make_job, parents, workdir)
    out = job.run()["conversations"]
    by_id = {c.id: c for c in read_records_jsonl(parents, Conversation)}
    branches = branches_of(out)
    assert [b.id for b in branches] == [f"{p}-b{j}" for p in sorted(by_id) for j in (1, 2, 3)]
    for b in branches:
        parent = by_id[b.parent_id or ""]
        assert b.branched_at == 2 and b.error is None
        assert [m.model_dump() for m in b.messages[:2]] == [m.model_dump() for m in parent.messages[:2]]
        assert len(b.messages) == parent.turns == 5  # to the original length
        assert [m.turn for m in b.messages] == list(range(5))
        assert {m.model for m in b.messages[2:] if m.role == "assistant"} == {"mock/tuned"}
        assert b.assistant_model == "mock/tuned" and b.assistant_system_prompt == parent.assistant_system_prompt
    # New seeds after the prefix: siblings differ from each other and from the parent at turn 3.
    for parent_id, parent in by_id.items():
        third = [b.messages[3].content for b in branches if b.parent_id == parent_id]
        assert len(set(third)) == 3 and parent.messages[3].content not in third
    assert job.log.metrics["branch.count"] == 6 and job.log.metrics["branch.parents"] == 2

    # A rerun in the same folder resumes: nothing is played again.
    again = tuned_branches(make_job, parents, workdir)
    again.run()
    assert again.client.meter.total().calls == 0
    assert [b.model_dump() for b in branches_of(out)] == [b.model_dump() for b in branches]


def test_from_the_slip_branches_only_what_slipped_at_the_turn_of_the_slip(make_job, workdir, parents):
    ids = sorted(c.id for c in read_records_jsonl(parents, Conversation))
    verdicts = workdir / "evaluations.jsonl"
    write_jsonl_atomic(
        verdicts,
        [
            judged(ids[0], "boundary_holding", 3, slip=4).model_dump(mode="json"),
            judged(ids[1], "boundary_holding", 9).model_dump(mode="json"),
        ],
    )
    job = make_job(
        "branch",
        f"input_file={parents}",
        f"evaluations_file={verdicts}",
        "models=mock",
        "branch.from_turn=slip",
        "branch.samples=2",
        "tracking.enabled=false",
        run_dir=workdir / "slip",
    )
    branches = branches_of(job.run()["conversations"])
    assert [(b.parent_id, b.branched_at) for b in branches] == [(ids[0], 4), (ids[0], 4)]
    assert all(len(b.messages) == 5 and b.messages[3].content for b in branches)
    assert job.log.metrics["branch.skipped"] == 1  # the one that held


def test_branching_refuses_what_it_cannot_do_and_says_how(make_job, workdir, parents):
    with pytest.raises(ConfigError) as e:
        make_job(
            "branch", f"input_file={parents}", "models=mock", "branch.from_turn=slip", "tracking.enabled=false"
        ).run()
    assert "evaluations_file=" in str(e.value) and "branch.from_turn=3" in str(e.value.fix)
    with pytest.raises(CharevalError) as e:
        make_job(
            "branch",
            f"input_file={parents}",
            "models=mock",
            "branch.from_turn=5",
            "tracking.enabled=false",
            run_dir=workdir / "past",
        ).run()
    assert "at or past its length (turns=5)" in str(e.value)

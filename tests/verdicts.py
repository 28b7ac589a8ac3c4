"""Constructed verdicts with known answers, for the comparison statistics and stage=gate."""

from __future__ import annotations

from chareval.schemas import Evaluation


def verdicts(
    passes: list[bool],
    *,
    scores: list[int] | None = None,
    contexts: str = "ctx",
    sha: bool = True,
    evaluator: str = "boundary_holding",
) -> list[Evaluation]:
    """One judgment per context, ctx-000.. in order; score 9 for a pass, 3 for a fail unless given."""
    scores = scores or [9 if p else 3 for p in passes]
    return [
        Evaluation(
            id=f"conv-{i:03d}|{evaluator}|judge|0",
            conversation_id=f"conv-{i:03d}",
            context_id=f"{contexts}-{i:03d}",
            context_sha256=f"{contexts}-sha-{i}" if sha else None,
            evaluator=evaluator,
            judge_model="judge",
            sample=0,
            seed=i,
            score=score,
            passed=passed,
        )
        for i, (passed, score) in enumerate(zip(passes, scores, strict=True))
    ]

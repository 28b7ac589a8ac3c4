"""budget.* and plan.*: what a command may spend, and how dry_run=true estimates what it would."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from chareval.config.base import Strict


class Budget(Strict):
    """A hard limit on one command's model calls (null: none). Once the next call would pass it, no
    new call starts; calls in flight finish and are kept (their cost can take the total a little
    past the limit)."""

    max_usd: float | None = Field(gt=0)
    max_tokens: int | None = Field(gt=0)
    # job: each job of a sweep has the whole budget; sweep: the jobs of one sweep share it.
    scope: Literal["job", "sweep"]

    @property
    def limited(self) -> bool:
        return self.max_usd is not None or self.max_tokens is not None


class PlanSettings(Strict):
    """What dry_run=true cannot count and so estimates: the calls are counted by running the stages
    on stand-in answers; a prompt's tokens are its characters over chars_per_token; a reply's are
    output_tokens of its role (or purpose: breach_check, attacker, …; else `default`), never above
    its max_tokens; thinking uses thinking_share of the provider's budget."""

    chars_per_token: float = Field(gt=0)
    output_tokens: dict[str, int]
    thinking_share: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _has_default(self) -> PlanSettings:
        if "default" not in self.output_tokens:
            raise ValueError("plan.output_tokens needs a `default` (the reply length of a role not listed)")
        return self

    def reply_tokens(self, role: str, max_tokens: int) -> int:
        return min(max_tokens, self.output_tokens.get(role, self.output_tokens["default"]))

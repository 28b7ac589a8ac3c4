"""budget.max_usd / budget.max_tokens: a hard limit on what one command spends. Every model call the
cache cannot answer first reserves its estimated cost (llm.plan's estimate); once a reservation
would take the total past the limit, the call does not start and BudgetExceeded stops the stage.
Calls already in flight finish, are cached and kept, so a rerun pays for nothing twice.

With budget.scope=sweep the jobs of one sweep launch share the limit through small files in the
sweep folder (one per job, read every half second), so jobs running side by side each see what the
others spent up to then."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from chareval.config import Budget, Models, PlanSettings
from chareval.errors import CharevalError
from chareval.io import write_text_atomic
from chareval.llm.base import LLMRequest, Provider
from chareval.llm.plan import estimate
from chareval.schemas import Usage

REFRESH_S = 0.5  # how stale the other jobs' spending may be (budget.scope=sweep)


class BudgetExceeded(CharevalError):
    """The command's budget is spent: nothing more is asked; what was made is written and kept."""


class Ledger:
    """One sweep launch's spending, a file per job: this job writes its own, reads the others'."""

    def __init__(self, folder: Path, job: str):
        self.folder = folder
        self.mine = folder / f"{job}.json"
        self._others = Usage()
        self._read_at = 0.0

    def others(self) -> Usage:
        now = time.monotonic()
        if now - self._read_at > REFRESH_S:
            total = Usage()
            for path in self.folder.glob("*.json") if self.folder.is_dir() else ():
                if path != self.mine:
                    try:
                        total += Usage.model_validate_json(path.read_text(encoding="utf-8"))
                    except (OSError, ValueError):  # being replaced right now: read it next time
                        continue
            self._others, self._read_at = total, now
        return self._others

    def write(self, spent: Usage) -> None:
        write_text_atomic(self.mine, spent.model_dump_json(), durable=False)


class Spending:
    """The job's spending against its budget (made only when budget.* sets a limit); shared by every
    client of the job."""

    def __init__(
        self,
        budget: Budget,
        models: Models,
        plan: PlanSettings,
        *,
        resume: str,
        cached: bool,
        ledger: Ledger | None = None,
    ):
        self.budget = budget
        self.resume = resume  # the command that goes on where this one stops
        self.cached = cached  # cache=true: the answers paid for are kept for the rerun
        self.models = models
        self.plan = plan
        self.ledger = ledger if budget.scope == "sweep" else None
        self.spent = Usage()
        self._reserved_usd = 0.0
        self._reserved_tokens = 0
        self._lock = threading.Lock()

    def reserve(self, role: str, request: LLMRequest, provider: Provider) -> tuple[float, int]:
        """Before a call: its estimate (llm.plan's) held against the budget, or BudgetExceeded."""
        expected = estimate(role, request, provider, self.plan)
        cost, tokens = expected.cost_usd(self.models.prices.get(request.model)), expected.tokens
        with self._lock:
            spent = self.spent + (self.ledger.others() if self.ledger else Usage())
            spent_tokens = spent.input_tokens + spent.output_tokens  # output_tokens include thinking
            b = self.budget
            if b.max_usd is not None and spent.cost_usd + self._reserved_usd + cost > b.max_usd:
                raise self._exceeded(
                    f"budget.max_usd={b.max_usd:g}", f"${spent.cost_usd:.4f}", f"about ${cost:.4f}", role, request
                )
            if b.max_tokens is not None and spent_tokens + self._reserved_tokens + tokens > b.max_tokens:
                raise self._exceeded(
                    f"budget.max_tokens={b.max_tokens}", f"{spent_tokens:,} tokens", f"about {tokens:,}", role, request
                )
            self._reserved_usd += cost
            self._reserved_tokens += tokens
        return cost, tokens

    def settle(self, reservation: tuple[float, int], usage: Usage | None) -> None:
        """After a call (usage None: it failed, nothing is known to be billed)."""
        with self._lock:
            self._reserved_usd -= reservation[0]
            self._reserved_tokens -= reservation[1]
            if usage is not None:
                self.spent += usage
            spent = self.spent
        if self.ledger and usage is not None:
            self.ledger.write(spent)

    def _exceeded(self, limit: str, spent: str, next_call: str, role: str, request: LLMRequest) -> BudgetExceeded:
        whose = " by this sweep's jobs" if self.ledger else ""
        kept = (
            "every answer so far is cached, none is paid for twice"
            if self.cached
            else "with cache=false, what was not written is asked again"
        )
        return BudgetExceeded(
            f"the budget is spent: {spent} spent{whose} of {limit}; the next call ({role} on {request.model}, "
            f"{next_call} by the plan.* estimates) would pass it, so no new call was started (the calls in "
            "flight finished and are kept)",
            f"{self.resume} and a higher budget (or budget.max_usd=null / budget.max_tokens=null): {kept}; "
            "add dry_run=true first to see what the rest would cost",
        )


def ledger_for(sweep_dir: str | None, invocation: str | None, job: str) -> Ledger | None:
    """The ledger of a sweep launch (None outside a sweep)."""
    if not sweep_dir:
        return None
    return Ledger(Path(sweep_dir) / ".chareval" / "spend" / (invocation or "launch"), job)

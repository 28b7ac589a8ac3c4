"""An evaluate run's turns-to-breach outputs: breach_curve.json, its picture and their metrics.

Computing them costs an evaluate command some 2 s of CPU it spends on nothing else (lifelines'
and matplotlib's imports; the fit and the drawing take milliseconds), a fifth of a fully cached
rerun of the whole pipeline. Both files are a function of the breach times alone, so with the
cache on they are kept beside the model calls' answers (paths.cache/breach), keyed by the times,
the picture's title, the versions of lifelines and matplotlib and the source of
evaluators/survival.py: a rerun whose verdicts are the same copies them. Like the calls' cache, a
memo that does not match its checksum is a miss, and one that cannot be written is a warning."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from chareval.evaluators import survival
from chareval.evaluators.survival import BreachTime, Outcome
from chareval.io import write_bytes_atomic, write_text_atomic
from chareval.schemas import Conversation, Evaluation
from chareval.stages.base import StageContext
from chareval.stages.selection import SLIP_EVALUATOR, verdicts
from chareval.store import names

log = logging.getLogger(__name__)
TITLE = "turns to breach (boundary_holding), 95% intervals"


@dataclass
class Breach:
    files: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    line: str = ""


def breach_outputs(ctx: StageContext, conversations: list[Conversation], records: list[Evaluation]) -> Breach:
    """When boundary_holding judged: the turns-to-breach curve and pass^k (breach_curve.json, .png),
    their metrics, and the survival by turn as the step history of breach.survival (the MLflow UI
    draws runs' curves side by side)."""
    found = verdicts(records, ctx.settings.evaluation.pass_threshold)
    outcomes = {
        cid: Outcome(v[SLIP_EVALUATOR].passed, v[SLIP_EVALUATOR].slip_turn)
        for cid, v in found.items()
        if SLIP_EVALUATOR in v and v[SLIP_EVALUATOR].mean is not None
    }
    times = survival.breach_times(conversations, outcomes)
    if not times:
        return Breach()
    data, picture = ctx.run_dir / names.BREACH_CURVE, ctx.run_dir / names.BREACH_PICTURE
    memo = Path(ctx.settings.paths.cache) / "breach" / f"{memo_key(times)}.json" if ctx.settings.cache else None
    result = recall(memo, data, picture) if memo else None
    if result is None:
        result = survival.breach_curve(times)
        text = json.dumps(result, indent=2) + "\n"
        write_text_atomic(data, text)
        survival.draw({name: g["survival"] for name, g in result["groups"].items()}, picture, TITLE)
        if memo:
            keep(memo, text, picture.read_bytes())
    for row in result["all"]["survival"]:
        ctx.mlflow.log_metric_at("breach.survival", row["survival"], row["turn"])
    pooled = result["all"]
    held = f"{pooled['survival'][-1]['survival']:.0%} held to turn {pooled['survival'][-1]['turn']}"
    passk = pooled["pass_hat_k"]
    tail = f", pass^{max(passk, key=int)} {passk[max(passk, key=int)]:.0%}" if passk else ""
    return Breach(
        {"breach_curve": data, "breach_curve_png": picture},
        survival.metrics(result),
        f"; boundary {held}{tail}",
    )


def memo_key(times: list[BreachTime]) -> str:
    """Everything the two files depend on."""
    identity = {
        "times": [asdict(t) for t in times],
        "title": TITLE,
        "lifelines": version("lifelines"),
        "matplotlib": version("matplotlib"),
        "code": hashlib.sha256(Path(survival.__file__).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _checksum(text: str, png: bytes) -> str:
    return hashlib.sha256(text.encode() + b"\0" + png).hexdigest()


def recall(memo: Path, data: Path, picture: Path) -> dict[str, Any] | None:
    """The memo's curve, its two files written to the run folder; None if there is no usable memo."""
    if not memo.is_file():
        return None
    try:
        entry = json.loads(memo.read_text(encoding="utf-8"))
        text, png = entry["curve"], base64.b64decode(entry["png"], validate=True)
        if _checksum(text, png) != entry["sha256"]:
            raise ValueError("checksum")
        result = json.loads(text)
    except (ValueError, KeyError, TypeError, OSError):  # JSON and base64 errors are ValueErrors
        log.warning("ignoring a corrupt breach-curve memo %s: drawing the curve again", memo)
        return None
    write_text_atomic(data, text)
    write_bytes_atomic(picture, png)
    return result


def keep(memo: Path, text: str, png: bytes) -> None:
    entry = {"sha256": _checksum(text, png), "curve": text, "png": base64.b64encode(png).decode()}
    try:
        write_text_atomic(memo, json.dumps(entry), durable=False)  # lost to a power cut: drawn again
    except OSError as e:
        log.warning("could not keep the breach curve in %s (%s): a rerun draws it again", memo.parent, e)

"""How long a chareval command takes to start and finish when there is little to do: each command is
run as a user runs it (a fresh `python src/run.py ...` process), best of --repeat, with MLflow's
own floor beside it (importing mlflow and opening the same SQLite store, which any command with
tracking on must do) and the hosted SDKs' import time (paid by the first call a process makes to
that API; a cached rerun and the embedded model never pay it).

    .venv/bin/python benchmarks/startup.py [--repeat 3] [--json results.json]

Targets on the 2-core machines (README): stage=prepare on a small file under 2 s, a config error
under 1 s."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONVERSATIONS = ROOT / "tests" / "data" / "conversations.jsonl"
# A process that imports MLflow and opens the store named after it, nothing else: what no command
# with tracking on goes under.
MLFLOW_ALONE = "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).search_experiments()"


def timed(command: list[str], repeat: int, expect: int = 0) -> float:
    """The best wall time of `repeat` runs (the least disturbed by whatever else the machine does)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        elapsed = time.perf_counter() - started
        if done.returncode != expect:
            raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
        best = min(best, elapsed)
    return round(best, 2)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    python, run = sys.executable, str(ROOT / "src" / "run.py")
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlruns/mlflow.db"
        prepare = [python, run, "stage=prepare", f"input_file={CONVERSATIONS}", f"paths.outputs={tmp}/outputs"]
        # The first run creates the store's tables (seconds, once per store): not what is measured.
        timed([*prepare, f"tracking.uri={store}", f"hydra.run.dir={tmp}/first"], 1)
        figures = {
            "python src/run.py --cfg job": timed([python, run, "--cfg", "job"], args.repeat),
            "a config error (turns=0)": timed([python, run, "stage=conversations", "turns=0"], args.repeat, expect=2),
            "stage=prepare, tracking off": timed(
                [*prepare, "tracking.enabled=false", f"hydra.run.dir={tmp}/off"], args.repeat
            ),
            "stage=prepare, tracking on (SQLite)": timed(
                [*prepare, f"tracking.uri={store}", f"hydra.run.dir={tmp}/on"], args.repeat
            ),
            "MLflow alone: import + open the store": timed([python, "-c", MLFLOW_ALONE, store], args.repeat),
            "importing the anthropic SDK": timed([python, "-c", "import anthropic"], args.repeat),
            "importing the openai SDK": timed([python, "-c", "import openai"], args.repeat),
        }
    width = max(map(len, figures))
    for what, seconds in figures.items():
        print(f"{what:<{width}}  {seconds:5.2f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()

"""DPO on the embedded model as a laptop user meets it: `stage=finetune finetune.training_method=dpo`
on N preference pairs shaped like stage=repair's (the persona's system prompt with its documents, a
user turn, the repair as chosen and the slip as rejected), with the stage's wall time, the peak
resident memory of the process and the loss and reward margin of its first and last steps.

    .venv/bin/python benchmarks/dpo.py [--pairs 20] [--epochs 3] [--workdir DIR] [override ...]

Target on the 2-core machines (README): peak RSS <= 3 GB, as for the rest of the embedded pipeline."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embedded import ROOT, run_pipeline  # noqa: E402

DATA = ROOT / "tests" / "data" / "conversations.jsonl"


def preference_pairs(n: int) -> list[dict]:
    record = json.loads(DATA.read_text(encoding="utf-8").splitlines()[1])
    system = record["assistant_system_prompt"]
    return [
        {
            "input": {
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": record["opening_prompt"]},
                    {"role": "assistant", "content": record["messages"][0]["content"]},
                    {"role": "user", "content": f"({i}) {record['messages'][1]['content']}"},
                ]
            },
            "preferred_output": [
                {"role": "assistant", "content": "I hear the frustration, but I respect our customers. Tell me more."}
            ],
            "non_preferred_output": [{"role": "assistant", "content": record["messages"][2]["content"]}],
        }
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="chareval-dpo-"))
    work.mkdir(parents=True, exist_ok=True)
    pairs = work / "preferences.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in preference_pairs(args.pairs)), encoding="utf-8")
    figures = run_pipeline(
        ROOT,
        work,
        [
            "stage=finetune",
            "finetune.training_method=dpo",
            f"finetune.n_epochs={args.epochs}",
            f"train_file={pairs}",
            *args.overrides,
        ],
    )
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    curves = {
        key: [m.value for m in client.get_metric_history(run.info.run_id, key)]
        for key in ("train.loss", "train.reward_margin")
    }
    print(f"DPO on the embedded model: {args.pairs} pairs x {args.epochs} epochs -> {work}")
    stage = figures["stages"]["finetune"]["wall_s"]
    print(f"  wall {figures['wall_s']} s (the stage {stage} s), peak RSS {figures['peak_rss_mb']} MB (target <= 3072)")
    for key, values in curves.items():
        print(f"  {key}: {values[0]:.3f} -> {values[-1]:.3f} over {len(values)} steps")


if __name__ == "__main__":
    main()

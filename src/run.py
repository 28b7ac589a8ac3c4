"""The one entrypoint: `python src/run.py stage=<stage> <overrides>` (see the README)."""

from __future__ import annotations

import logging
import signal
import sys

import hydra
from omegaconf import DictConfig

from chareval.config import register_resolvers
from chareval.errors import CharevalError

register_resolvers()  # before Hydra composes: conf/ uses ${project_root:}
log = logging.getLogger("chareval")


def _stop(signum, frame):
    raise KeyboardInterrupt  # a kill (SIGTERM) stops as cleanly as Ctrl-C: finished work is kept


signal.signal(signal.SIGTERM, _stop)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from chareval.app import Job
    from chareval.report import print_report
    from chareval.sweep import record_outcome
    from chareval.tracking import error_text

    run_dir = HydraConfig.get().runtime.output_dir
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    resume = f"rerun the same command with hydra.run.dir={run_dir} to resume where it stopped"
    job, error, code = None, None, 0
    try:
        job = Job.from_hydra(cfg)
        job.run()
    except CharevalError as e:
        print(f"error: {e}", file=sys.stderr)
        error, code = str(e), 2
    except KeyboardInterrupt:
        if in_sweep:
            record_outcome(cfg, job, "interrupted", "interrupted")
        print(f"\ninterrupted: finished work is saved in {run_dir}; {resume}", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        log.exception("unexpected failure; finished work is saved in %s; %s", run_dir, resume)
        error, code = error_text(e), 1
    if in_sweep:
        # The sweep goes on with its other jobs; its end reports every job and exits non-zero if one failed.
        record_outcome(cfg, job, "failed" if code else "completed", error)
    elif code:
        sys.exit(code)
    if not code:
        print_report(job)


if __name__ == "__main__":
    main()

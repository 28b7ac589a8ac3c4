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

    from chareval.app import Job
    from chareval.report import print_report

    run_dir = HydraConfig.get().runtime.output_dir
    resume = f"rerun the same command with hydra.run.dir={run_dir} to resume where it stopped"
    try:
        job = Job.from_hydra(cfg)
        outputs = job.run()
    except CharevalError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished work is saved in {run_dir}; {resume}", file=sys.stderr)
        sys.exit(130)
    except Exception:
        log.exception("unexpected failure; finished work is saved in %s; %s", run_dir, resume)
        sys.exit(1)
    print_report(job, outputs)


if __name__ == "__main__":
    main()

"""The one entrypoint: `python src/run.py stage=<stage> <overrides>` (see the README)."""

from __future__ import annotations

import signal
import sys


def _interrupted_early(signum, frame):
    print("\ninterrupted before any work started: nothing was written", file=sys.stderr)
    sys.exit(130)


# Ctrl-C while the libraries load (a second or more) ends quietly; main() takes over once work starts.
signal.signal(signal.SIGINT, _interrupted_early)

import errno  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402

# MLflow's own console handler would bypass chareval's log config (conf/hydra/job_logging): its lines
# go through chareval's handlers instead, redacted, at the levels set there, repeats shown once.
os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from chareval.config import register_resolvers  # noqa: E402
from chareval.errors import CharevalError  # noqa: E402

register_resolvers()  # before Hydra composes: conf/ uses ${project_root:}
log = logging.getLogger("chareval")


def _stop(signum, frame):
    raise KeyboardInterrupt  # a kill (SIGTERM) stops as cleanly as Ctrl-C: finished work is kept


signal.signal(signal.SIGTERM, _stop)


# A full disk, a read-only folder: the user can fix these, so they get a message, not a traceback.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM}


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from chareval.app import Job
    from chareval.report import print_report
    from chareval.store.runs import error_text, store_failure
    from chareval.sweep import record_outcome

    run_dir = HydraConfig.get().runtime.output_dir
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    resume = f"rerun the same command with hydra.run.dir={run_dir} to resume where it stopped"
    job, error, code, busy, finished = None, None, 0, None, False
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here, Ctrl-C keeps finished work
    try:
        job = Job.from_hydra(cfg)
        job.run()
        # A stage that finished with a "no" (stage=gate: a regression) exits non-zero after its report.
        finished, code, error = True, job.log.exit_code, job.log.verdict
    except CharevalError as e:
        print(f"error: {e}", file=sys.stderr)
        error, code, busy = str(e), 2, getattr(e, "holder", None)
    except KeyboardInterrupt:
        if in_sweep:
            record_outcome(cfg, job, "interrupted", "interrupted")
        print(f"\ninterrupted: finished work is saved in {run_dir}; {resume}", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            log.exception("unexpected failure; finished work is saved in %s; %s", run_dir, resume)
            error, code = error_text(e), 1
        else:
            print(
                f"error: cannot write {e.filename or 'a file'}: {e.strerror}\n  fix: free space or fix "
                f"the permissions, then {resume}",
                file=sys.stderr,
            )
            error, code = f"{e.strerror}: {e.filename}", 2
    except Exception as e:
        failure = store_failure(e, run_dir, resume)
        if failure is not None:
            print(f"error: {failure}", file=sys.stderr)
            error, code = str(failure), 2
        else:
            log.exception("unexpected failure; finished work is saved in %s; %s", run_dir, resume)
            error, code = error_text(e), 1
    if in_sweep:
        # The sweep goes on with its other jobs; its end reports every job and exits non-zero if one failed.
        record_outcome(cfg, job, "failed" if code else "completed", error, busy_pid=busy)
    if finished:
        print_report(job)
    if code and not in_sweep:
        sys.exit(code)


if __name__ == "__main__":
    from pathlib import Path

    from chareval.cli import check_group_options, check_output_folders, check_override_keys

    if "stage=doctor" in sys.argv[1:]:  # the older spelling of python src/doctor.py
        from chareval.doctor import main as doctor

        sys.exit(doctor(sys.argv[1:]))
    try:
        check_override_keys(sys.argv[1:], Path(__file__).resolve().parent.parent / "conf")
        check_group_options(sys.argv[1:], Path(__file__).resolve().parent.parent / "conf")
        check_output_folders(sys.argv[1:])
    except CharevalError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    main()

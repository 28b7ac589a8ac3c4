"""`python src/doctor.py <overrides>`: is this machine ready to run the experiment these overrides
compose? Prints each check with its fix; exit 2 when something would stop a run. Writes nothing."""

from __future__ import annotations

import sys

from chareval.doctor import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

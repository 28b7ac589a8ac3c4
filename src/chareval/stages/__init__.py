"""The stages: each module here runs one and registers it in STAGES (stages/base.py) with what it
needs: its input, the files it writes, the model roles it calls, its settings class."""

from chareval.stages.base import STAGES, InputSpec, Stage

__all__ = ["STAGES", "InputSpec", "Stage"]

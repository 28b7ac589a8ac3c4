"""chareval: character evaluation and fine-tuning pipeline."""

from pathlib import Path

# src/chareval/__init__.py -> the repository root; outputs/ and mlruns/ live there.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

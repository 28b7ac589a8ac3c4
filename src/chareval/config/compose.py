"""The config composed as src/run.py composes it, for the commands that run no stage (doctor, the
dashboard) and the checks of the documented commands. Hydra's errors become a ConfigError."""

from __future__ import annotations

from omegaconf import DictConfig

from chareval import PROJECT_ROOT
from chareval.config.app import register_resolvers
from chareval.errors import ConfigError

CONF = PROJECT_ROOT / "conf"


def compose(overrides: list[str], *, hydra: bool = False) -> DictConfig:
    """conf/config.yaml with these overrides (hydra: with the hydra node, as `--cfg all` shows it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=hydra)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(
            f"the overrides {' '.join(overrides)!r} do not compose: {e}",
            "use the overrides of src/run.py (python src/run.py --help lists the groups)",
        ) from None

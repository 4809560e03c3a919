"""The training configuration (``sections``: what a run is; ``load``: how recipes and overrides
become one, checked once)."""

from copydistill.config.load import config_from_dict, dump_config, load_config, to_flat, to_nested
from copydistill.config.sections import (
    FLAT,
    FLAT_OF,
    SECTIONS,
    DataConfig,
    DistillationConfig,
    InfoNCEConfig,
    MoCoConfig,
    ObjectiveConfig,
    OptimiserConfig,
    StudentConfig,
    TrainConfig,
    TrainerConfig,
)

__all__ = [
    "FLAT", "FLAT_OF", "SECTIONS", "DataConfig", "DistillationConfig", "InfoNCEConfig", "MoCoConfig",
    "ObjectiveConfig", "OptimiserConfig", "StudentConfig", "TrainConfig", "TrainerConfig",
    "config_from_dict", "dump_config", "load_config", "to_flat", "to_nested",
]

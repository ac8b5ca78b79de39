from ember.config.loader import apply_override, dump_yaml, from_dict, load_config, to_dict
from ember.config.schema import (
    DataConfig,
    DatasetSpec,
    EmberConfig,
    MethodConfig,
    ModelConfig,
    OutputConfig,
    TrainConfig,
)
from ember.config.validate import validate

__all__ = [
    "DataConfig",
    "DatasetSpec",
    "EmberConfig",
    "MethodConfig",
    "ModelConfig",
    "OutputConfig",
    "TrainConfig",
    "apply_override",
    "dump_yaml",
    "from_dict",
    "load_config",
    "to_dict",
    "validate",
]

from kdzoo.config.load import (
           apply_overrides,
           config_from_data,
           config_to_yaml,
           load_config,
           read_yaml,
)
from kdzoo.config.schema import (
           Config,
           DatasetConfig,
           EngineConfig,
           ModelConfig,
           OptimConfig,
           ScheduleConfig,
)
from kdzoo.config.validate import from_dict, to_dict

__all__ = ["Config", "DatasetConfig", "EngineConfig", "ModelConfig", "OptimConfig", "ScheduleConfig",
           "apply_overrides", "config_from_data", "config_to_yaml", "from_dict", "load_config", "read_yaml",
           "to_dict"]

"""The run configuration: one YAML file, validated before any work starts.

schema.py holds the sections (pydantic), rules.py the rules across sections and each task's own,
load.py the loader, its `--set` overrides and the error renderer; metric_names.py and gates.py
the metric names and gate grammar a run file may use.  Config is the bottom layer: it imports
nothing of tuneforge but errors and paths.  The public names are re-exported here.
"""

from tuneforge.config.load import apply_override, describe_errors, dump_config, load_config, valid_keys, yaml_line
from tuneforge.config.rules import CLASSIFY_BEST_METRICS, PRETRAIN_BEST_METRICS, same_model
from tuneforge.config.schema import (
    DEFAULT_IMAGE_MODEL,
    DEFAULT_MODEL,
    CheckpointConfig,
    ClassifyConfig,
    CleanConfig,
    DataConfig,
    EvalConfig,
    ImageConfig,
    LoraConfig,
    ModelConfig,
    ParamRange,
    ReplayConfig,
    RunConfig,
    Section,
    TrainConfig,
    TuneConfig,
    each_checked,
    existing_file,
    existing_source,
)

__all__ = [
    "CLASSIFY_BEST_METRICS", "DEFAULT_IMAGE_MODEL", "DEFAULT_MODEL", "PRETRAIN_BEST_METRICS", "CheckpointConfig", "ClassifyConfig",
    "CleanConfig", "DataConfig", "EvalConfig", "ImageConfig", "LoraConfig", "ModelConfig", "ParamRange", "ReplayConfig",
    "RunConfig", "Section", "TrainConfig", "TuneConfig", "apply_override", "describe_errors", "dump_config",
    "each_checked", "existing_file", "existing_source", "load_config", "same_model", "valid_keys", "yaml_line",
]

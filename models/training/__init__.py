"""Training: run config, two-stream sampler, dual-network trainer with hooks."""

from models.training.api import build_networks, train_dual
from models.training.config import (
    IntensityConfig,
    LRScheduleConfig,
    NetworksConfig,
    NetworkSpec,
    OptimizerConfig,
    PreprocessingConfig,
    SamplerConfig,
    TrainConfig,
    available_configs,
    configs_dir,
    load_config,
)
from models.training.hooks import RichProgressHook, TrainerHook
from models.training.sampler import TwoStreamSampler
from models.training.trainer import CHECKPOINT_NAME, LOG_NAME, Trainer, split_labeled

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "IntensityConfig",
    "LRScheduleConfig",
    "NetworkSpec",
    "NetworksConfig",
    "OptimizerConfig",
    "PreprocessingConfig",
    "RichProgressHook",
    "SamplerConfig",
    "TrainConfig",
    "Trainer",
    "TrainerHook",
    "TwoStreamSampler",
    "available_configs",
    "build_networks",
    "configs_dir",
    "load_config",
    "split_labeled",
    "train_dual",
]

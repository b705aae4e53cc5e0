"""The typed recipe: every key a YAML recipe may hold, with defaults that follow the classic CIFAR recipe."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union


@dataclass
class DatasetConfig:
    name: str = "digits"
    root: Optional[str] = None
    download: bool = False
    augment: bool = True
    image_size: Optional[int] = None
    batch_size: int = 64  # per process
    eval_batch_size: int = 256
    num_workers: int = 0
    subset: Optional[float] = None  # stratified part of the training set: a fraction (<= 1) or a count (> 1)
    subset_seed: int = 0
    drop_last: bool = False


@dataclass
class ModelConfig:
    arch: Optional[str] = None  # for a teacher, taken from its checkpoint when omitted
    checkpoint: Optional[str] = None  # a run folder or a .safetensors file
    stages: Optional[list[str]] = None  # feature spec override for models kdzoo has no table for
    head: Optional[str] = None


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    grad_clip: Optional[float] = None


@dataclass
class ScheduleConfig:
    name: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0


@dataclass
class EngineConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where the hardware has it
    channels_last: bool = True
    teacher_first: bool = True  # teacher forward (inference mode) before the student's: less live memory
    eval_every: int = 1
    progress: bool = True
    log_every: int = 50
    tensorboard: bool = True
    wandb: bool = False
    threads: Optional[int] = None  # torch intra-op threads on CPU


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    epochs: int = 240
    regime: str = "offline"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    student: ModelConfig = field(default_factory=lambda: ModelConfig(arch="resnet8"))
    teacher: ModelConfig = field(default_factory=ModelConfig)
    loss: dict[str, float] = field(default_factory=lambda: {"ce": 1.0})
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method parameters
    regime_args: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


Number = Union[int, float]

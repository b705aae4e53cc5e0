"""The typed recipe: every key a YAML recipe may hold, with defaults that follow the classic CIFAR recipe.

Allowed ranges sit next to the fields, in the dataclass field metadata, and are checked by `from_dict`
(so YAML files and dotted overrides alike): `ge`/`gt` (>=, >) and `le`/`lt` (<=, <) bound a number,
`each` applies its own bounds to every item of a list or value of a mapping, and `hint` is added to the
message in parentheses. `None` (an optional key left unset) is never range-checked. Floats must be finite
everywhere (see `kdzoo.config.validate`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

# torch.manual_seed / torch.Generator.manual_seed take up to 2**64 - 1 (numpy gets seed % 2**32); the engine and
# the loaders add the epoch and rank * 2**32 to the seed, so the recipe range keeps half of that as headroom.
SEED_MAX = 2**63 - 1
SEED = {"ge": 0, "le": SEED_MAX}
POSITIVE_INT = {"ge": 1}


@dataclass
class SubsetConfig:
    """`dataset.subset`: stratified, seeded draws from the training set (kdzoo.data.recipe_streams).

    Without `few_sample`, `val` is held out of the whole training set first (evaluation pipeline) and `size` is
    then drawn from what remains. With `few_sample` (CKD's setting), `size` images are drawn afresh for every run
    seed and `val` of them is held out. Older recipes' flat keys (`subset`, `fraction`, `subset_seed`,
    `val_fraction`, `subset_size`, `subset_val_fraction`) still load into this block."""
    size: Optional[float] = field(default=None, metadata={"gt": 0, "hint": "a fraction <= 1 or a count > 1"})
    val: Optional[float] = field(default=None, metadata={"gt": 0, "lt": 1, "hint": "a fraction in (0, 1)"})
    seed: int = field(default=0, metadata=SEED)
    few_sample: bool = False


@dataclass
class DatasetConfig:
    name: str = "digits"
    root: Optional[str] = None
    download: bool = False
    augment: bool = True  # false: the `train` pipeline does not augment
    # named views of each training sample and their pipelines (train, plain, test); null: {x: train}
    views: Optional[dict[str, str]] = None
    # a transform of every training batch (rotate4); null: the one the recipe's methods ask for, if any
    batch_transform: Optional[str] = None
    image_size: Optional[int] = field(default=None, metadata={"ge": 1})
    batch_size: int = field(default=64, metadata=POSITIVE_INT)  # per process
    eval_batch_size: int = field(default=256, metadata=POSITIVE_INT)
    num_workers: int = field(default=0, metadata={"ge": 0})
    # which part of the training set a run trains on, and which part it holds out as the `val` stream
    subset: SubsetConfig = field(default_factory=SubsetConfig)
    drop_last: bool = False
    # torch (DataLoader), dali (NVIDIA DALI's GPU decoding for imagenet / imagefolder; data/dali.py) or device
    # (the whole dataset on the training device, augmented there in batches; data/device_loader.py)
    loader: Literal["torch", "dali", "device"] = "torch"


@dataclass
class ModelConfig:
    arch: Optional[str] = None  # for a teacher, taken from its checkpoint when omitted
    checkpoint: Optional[str] = None  # a run folder or a .safetensors file
    stages: Optional[list[str]] = None  # feature spec override for models kdzoo has no table for
    head: Optional[str] = None
    # false: load only the checkpoint's tensors that fit (a backbone under a new head), listing the rest
    checkpoint_strict: bool = True
    freeze: list[str] = field(default_factory=list)  # module prefixes kept fixed ("" = the whole model)
    # teacher only: run it once per training image and train on its cached outputs (program/teacher_cache.py)
    # replay: per epoch, the augmentation of every image and the teacher's top-k soft labels on it, recorded once
    # and replayed by later runs without the teacher (program/teacher_replay.py); share it with cache_dir
    cache: Union[bool, Literal["replay"]] = False
    cache_dir: Optional[str] = None  # where the cache lives; null: the run folder
    replay_topk: int = field(default=10, metadata=POSITIVE_INT)  # soft labels kept per image and epoch


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = field(default=0.05, metadata={"ge": 0})
    momentum: float = field(default=0.9, metadata={"ge": 0, "le": 1})
    nesterov: bool = False
    weight_decay: float = field(default=5e-4, metadata={"ge": 0})
    # a negative clip norm would flip the gradient
    grad_clip: Optional[float] = field(default=None, metadata={"gt": 0, "hint": "null turns clipping off"})


@dataclass
class ScheduleConfig:
    # plateau: constant (after warm-up) until `patience` evaluations in a row bring no new best of the
    # selection metric, then lr *= factor (and the best weights back when reload_best); after `cuts` cuts the
    # next plateau stops the phase (CKD: patience 50, factor 0.1, cuts 2 -> lr0, lr0/10, lr0/100)
    name: Literal["multistep", "cosine", "constant", "plateau"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210], metadata={"each": {"ge": 0}})
    gamma: float = field(default=0.1, metadata={"gt": 0})
    warmup_epochs: float = field(default=0.0, metadata={"ge": 0})
    min_lr: float = field(default=0.0, metadata={"ge": 0})
    patience: int = field(default=5, metadata={"ge": 1})
    reload_best: bool = True
    max_cuts: Optional[int] = field(default=None, metadata={"ge": 0, "hint": "null: never stop"})
    factor: Optional[float] = field(default=None, metadata={"gt": 0, "hint": "plateau's lr cut; null: gamma"})
    cuts: Optional[int] = field(default=None, metadata={"ge": 0, "hint": "another name for max_cuts"})


@dataclass
class EngineConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where the hardware has it
    channels_last: bool = True
    teacher_first: bool = True  # teacher forward (inference mode) before the student's: less live memory
    eval_every: int = field(default=1, metadata=POSITIVE_INT)
    # no evaluation in a phase's first N epochs (i-Mix's --start-eval N); the last epoch is always evaluated
    eval_start: int = field(default=0, metadata={"ge": 0})
    progress: bool = True
    log_every: int = field(default=50, metadata=POSITIVE_INT)
    tensorboard: bool = True
    # torch intra-op threads on CPU
    threads: Optional[int] = field(default=None, metadata={"ge": 1, "hint": "null keeps torch's default"})
    # DDP on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm); CUDA only (NCCL)
    sync_bn: bool = False
    # torch.compile every network's forward (students, teachers; in place: checkpoints keep their keys)
    compile: bool = False
    compile_backend: str = "inductor"  # any torch.compile backend (eager / aot_eager check a setup quickly)
    # torch.compile's mode: null or default, max-autotune-no-cudagraphs (CUDA graphs, which the modes
    # reduce-overhead and max-autotune add, are not offered: untested with training state kept across steps)
    compile_mode: Optional[Literal["default", "max-autotune-no-cudagraphs"]] = None


@dataclass
class LoggingConfig:
    # {project, entity, name, tags, group, mode}: also log to Weights & Biases (TensorBoard and JSONL stay)
    wandb: Optional[dict[str, Any]] = None


@dataclass
class Config:
    name: str = "run"
    # modules to import first: plugins that register methods, models or datasets (kdzoo.plugins)
    imports: list[str] = field(default_factory=list)
    seed: int = field(default=0, metadata=SEED)
    epochs: int = field(default=240, metadata=POSITIVE_INT)
    regime: str = "offline"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    student: ModelConfig = field(default_factory=lambda: ModelConfig(arch="resnet8"))
    teacher: ModelConfig = field(default_factory=ModelConfig)
    # the regime's own parameters, validated by its Params; a recipe gives them as a section named after the regime
    # (`double_student: {ema_decay: 0.99}`), and config.yaml keeps them so
    regime_params: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, float] = field(default_factory=lambda: {"ce": 1.0},
                                   metadata={"each": {"ge": 0, "hint": "a loss weight"}})
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method parameters
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


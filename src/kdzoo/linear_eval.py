"""`kdzoo linear-eval --checkpoint RUN`: the linear evaluation protocol of i-Mix (kibok90/imix main_lincls.py), on
the `linear_probe` regime: a frozen encoder, a new linear classifier (N(0, 0.01) weights, zero bias), SGD with
momentum 0.9 and no weight decay, batch 256, 100 epochs, lr 10 * batch / 256 cut x0.2 at 80%, 90% and 95% of
the epochs, the dataset's training augmentation (RandomCrop with padding + flip; `--no-augment`: none, and the
encoder's features are computed once); best and last top-1. `--dataset stl10` / `imagefolder` (TinyImageNet's layout) is
HSAKD's transfer probe (eval_rep.py): the images resized to the encoder's input size; `--protocol hsakd` takes its
optimiser (batch 64, lr 0.1, x0.1 at 30/60/90 of 100 epochs, Nesterov, no weight decay). Its augmentation is
RandomResizedCrop(32) + flip; kdzoo's is the dataset's pad-crop + flip after the resize. A run folder like every
command's: `--resume RUN` continues an interrupted probe exactly. `--start-eval N` (i-Mix's): test-set
evaluation only from (0-based) epoch N on and at the last epoch (engine.eval_start), the best epoch chosen
among those.
"""
from __future__ import annotations

import re
from pathlib import Path

from kdzoo.errors import ConfigError, KdzooError

# (batch, lr for that batch, milestones as fractions of the epochs, gamma, nesterov)
PROTOCOLS = {"imix": (256, lambda b: 10 * b / 256, (0.8, 0.9, 0.95), 0.2, False),
             "hsakd": (64, lambda b: 0.1, (0.3, 0.6, 0.9), 0.1, True)}


def add_command(sub) -> None:
    p = sub.add_parser("linear-eval", help="linear evaluation (and transfer probes) of a checkpoint's frozen encoder")
    p.add_argument("--checkpoint", help="a run folder or a .safetensors checkpoint (the encoder)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted linear-eval run exactly")
    p.add_argument("--network", help="which artifact of a run folder: student (default) or another one it saved, "
                                     "e.g. teacher")
    p.add_argument("--dataset", help="probe dataset (default: the encoder's own), e.g. stl10, imagefolder")
    p.add_argument("--data-root", help="its folder")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS),
                   help="imix (default): batch 256, lr 10 * B / 256, x0.2 at 80/90/95%%, no weight decay; hsakd "
                        "(eval_rep.py): batch 64, lr 0.1 x0.1 at 30/60/90%%, Nesterov")
    p.add_argument("--epochs", type=int, help="default: 100")
    p.add_argument("--start-eval", metavar="N", help="evaluate only from epoch N on (0-based, as i-Mix's "
                                                     "--start-eval) and at the last epoch; default 0: every epoch")
    p.add_argument("--batch-size", type=int, help="default: the protocol's")
    p.add_argument("--lr", type=float, help="default: the protocol's")
    p.add_argument("--no-augment", action="store_true", help="no augmentation: features computed once (fast)")
    p.add_argument("--seed", type=int, help="default: 0")
    p.add_argument("--out", help="run folder (default: runs/linear_eval/<encoder run>-<dataset>)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the probe recipe, e.g. engine.eval_every=5")
    p.set_defaults(func=cmd_linear_eval)


# What defines a probe: fixed once it started (--resume continues the recipe saved in its folder)
PROBE_FLAGS = ("checkpoint", "network", "dataset", "protocol", "batch_size", "lr", "no_augment", "seed")


def encoder_file(checkpoint: str, network: str) -> Path:
    """The checkpoint file of `network` in a run folder (student: the run's deployed model), or the file given."""
    from kdzoo.checkpoints.store import resolve_checkpoint

    try:
        return resolve_checkpoint(checkpoint, "best", network=network)
    except KdzooError as err:
        raise KdzooError(f"--network {network}: {err}" if "saved no" in str(err) else str(err)) from None


def probe_recipe(file: Path, args) -> dict:
    from kdzoo.checkpoints.format import read_meta

    meta = read_meta(file)
    dataset = args.dataset or meta.get("dataset")
    if not dataset or dataset == "synthetic":
        raise KdzooError(f"{file}: no dataset recorded; name the probe dataset with --dataset")
    batch, lr, fractions, gamma, nesterov = PROTOCOLS[getattr(args, "protocol", None) or "imix"]
    batch = args.batch_size or batch
    data = {"name": dataset, "batch_size": batch, "augment": not args.no_augment}
    if args.data_root or (dataset == meta.get("dataset") and meta.get("dataset_root")):
        data["root"] = args.data_root or meta.get("dataset_root")
    shape = meta.get("input_shape")
    if dataset != meta.get("dataset") and shape and len(shape) == 3:
        data["image_size"] = int(shape[-1])  # HSAKD's probes: resized to the encoder's input size
    elif meta.get("image_size"):
        data["image_size"] = meta["image_size"]
    e = 100 if args.epochs is None else args.epochs
    milestones = sorted({max(1, round(e * f)) for f in fractions})
    return {"name": f"linear-eval-{meta.get('arch')}-{dataset}", "seed": args.seed or 0, "epochs": e,
            "regime": "linear_probe", "dataset": data, "student": {"checkpoint": str(file)}, "loss": {"ce": 1.0},
            "optim": {"name": "sgd", "lr": args.lr if args.lr is not None else lr(batch), "momentum": 0.9,
                      "nesterov": nesterov, "weight_decay": 0.0},
            "schedule": {"name": "multistep", "milestones": milestones, "gamma": gamma}}


def cmd_linear_eval(args) -> int:
    from kdzoo.checkpoints.run_folder import refuse_existing_run
    from kdzoo.config import config_from_data
    from kdzoo.config.load import apply_overrides
    from kdzoo.engine.trainer import make_engine

    overrides = [*args.overrides, *_engine_flags(args)]
    if args.resume:
        run_dir = Path(args.resume)
        cfg = _resumed_probe(args, run_dir, overrides)
        file = cfg.student.checkpoint
    else:
        if not args.checkpoint:
            raise KdzooError("kdzoo linear-eval: give the encoder with --checkpoint RUN_OR_FILE (or --resume RUN_DIR)")
        file = encoder_file(args.checkpoint, args.network or "student")
        cfg = config_from_data(apply_overrides(probe_recipe(file, args), overrides))
        source = Path(args.checkpoint)
        label = source.name if source.is_dir() else source.stem
        run_dir = Path(args.out or Path("runs") / "linear_eval" / f"{label}-{cfg.dataset.name}")
        refuse_existing_run(run_dir, "kdzoo linear-eval")
    engine = make_engine(cfg, run_dir, resume=bool(args.resume), quiet=args.quiet)
    summary = engine.fit()
    if engine.dist.is_main:
        from kdzoo.engine.trainer import end_of_run

        print(f"linear eval of {file} on {cfg.dataset.name}: {end_of_run(summary)}; run folder {run_dir}")
    return 0


def _engine_flags(args) -> list[str]:
    """--start-eval and --epochs as the recipe's overrides (both may change on --resume)."""
    extra = []
    if args.start_eval is not None:
        if not re.fullmatch(r"\d+", args.start_eval.strip()):
            raise ConfigError(f"--start-eval: {args.start_eval!r}: give a whole number of epochs >= 0")
        extra.append(f"engine.eval_start={int(args.start_eval)}")
    if args.resume and args.epochs is not None:
        extra.append(f"epochs={args.epochs}")
    return extra


def _resumed_probe(args, run_dir: Path, overrides: list[str]):
    """The probe recipe saved in `run_dir`, refusing the flags that define another probe."""
    from kdzoo.engine.resume_rules import RULE, load_resumed_config

    given = [name for name in PROBE_FLAGS if getattr(args, name) is not None and getattr(args, name) is not False]
    if given:
        raise KdzooError(f"--resume continues the probe saved in {run_dir}; drop --{given[0].replace('_', '-')} "
                         f"({RULE})")
    if args.out and Path(args.out) != run_dir:
        raise KdzooError("--resume continues in its own folder; drop --out")
    if args.data_root:
        overrides = [*overrides, f"dataset.root={args.data_root}"]
    cfg = load_resumed_config(run_dir, overrides, "kdzoo linear-eval --checkpoint ENCODER --out "
                                                  f"{run_dir}")
    if cfg.regime != "linear_probe":
        raise KdzooError(f"{run_dir} is no linear-eval run (its regime is {cfg.regime}); continue it with the "
                         "command that started it (kdzoo train/distill/pretrain --resume)")
    return cfg

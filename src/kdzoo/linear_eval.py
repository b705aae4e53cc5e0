"""`kdzoo linear-eval --checkpoint RUN`: the linear evaluation protocol of i-Mix (kibok90/imix main_lincls.py), on
the `linear_probe` regime: a frozen encoder, a new linear classifier (N(0, 0.01) weights, zero bias), SGD with
momentum 0.9 and no weight decay, batch 256, 100 epochs, lr 10 * batch / 256 cut x0.2 at 80%, 90% and 95% of
the epochs, the dataset's training augmentation (RandomCrop with padding + flip; `--no-augment`: none, and the
encoder's features are computed once); best and last top-1. `--dataset stl10` / `imagefolder` (TinyImageNet's layout) is
HSAKD's transfer probe (eval_rep.py): the images resized to the encoder's input size; `--protocol hsakd` takes its
optimiser (batch 64, lr 0.1, x0.1 at 30/60/90 of 100 epochs, Nesterov, no weight decay). Its augmentation is
RandomResizedCrop(32) + flip; kdzoo's is the dataset's pad-crop + flip after the resize. A run folder like every command's.
"""
from __future__ import annotations

import re
from pathlib import Path

from kdzoo.errors import KdzooError


# (batch, lr for that batch, milestones as fractions of the epochs, gamma, nesterov)
PROTOCOLS = {"imix": (256, lambda b: 10 * b / 256, (0.8, 0.9, 0.95), 0.2, False),
             "hsakd": (64, lambda b: 0.1, (0.3, 0.6, 0.9), 0.1, True)}


def add_command(sub) -> None:
    p = sub.add_parser("linear-eval", help="linear evaluation (and transfer probes) of a checkpoint's frozen encoder")
    p.add_argument("--checkpoint", required=True, help="a run folder or a .safetensors checkpoint")
    p.add_argument("--network", default="student",
                   help="which artifact of a run folder: student (default) or another one it saved, e.g. teacher")
    p.add_argument("--dataset", help="probe dataset (default: the encoder's own), e.g. stl10, imagefolder")
    p.add_argument("--data-root", help="its folder")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="imix",
                   help="imix (default): batch 256, lr 10 * B / 256, x0.2 at 80/90/95%%, no weight decay; hsakd "
                        "(eval_rep.py): batch 64, lr 0.1 x0.1 at 30/60/90%%, Nesterov")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, help="default: the protocol's")
    p.add_argument("--lr", type=float, help="default: the protocol's")
    p.add_argument("--no-augment", action="store_true", help="no augmentation: features computed once (fast)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run folder (default: runs/linear_eval/<encoder run>-<dataset>)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the probe recipe, e.g. engine.eval_every=5")
    p.set_defaults(func=cmd_linear_eval)


def encoder_file(checkpoint: str, network: str) -> Path:
    """The checkpoint file of `network` in a run folder (student: the run's deployed model), or the file given."""
    from kdzoo.engine.checkpoint import read_meta, resolve_checkpoint

    path = Path(checkpoint)
    if path.is_dir() and network != "student":  # (the student's file: resolve_checkpoint picks last for SS runs)
        # a self-supervised run's "best" was picked by a kNN monitor on test labels: probe its last weights
        which = "last" if read_meta(resolve_checkpoint(checkpoint, "last")).get("self_supervised") else "best"
        file = path / "checkpoints" / f"{network}.{which}.safetensors"
        if not file.is_file():
            found = sorted({p.name.split(".")[0] for p in (path / "checkpoints").glob("*.best.safetensors")
                            if not re.fullmatch(r"c\d+", p.name.split(".")[0])})
            raise KdzooError(f"--network {network}: {path} saved no {network} network "
                             f"(it has: student{''.join(', ' + n for n in found)})")
        return file
    return resolve_checkpoint(checkpoint, "best")


def probe_recipe(file: Path, args) -> dict:
    from kdzoo.engine.checkpoint import read_meta

    meta = read_meta(file)
    dataset = args.dataset or meta.get("dataset")
    if not dataset or dataset == "synthetic":
        raise KdzooError(f"{file}: no dataset recorded; name the probe dataset with --dataset")
    batch, lr, fractions, gamma, nesterov = PROTOCOLS[getattr(args, "protocol", "imix")]
    batch = args.batch_size or batch
    data = {"name": dataset, "batch_size": batch, "augment": not args.no_augment}
    if args.data_root or (dataset == meta.get("dataset") and meta.get("dataset_root")):
        data["root"] = args.data_root or meta.get("dataset_root")
    shape = meta.get("input_shape")
    if dataset != meta.get("dataset") and shape and len(shape) == 3:
        data["image_size"] = int(shape[-1])  # HSAKD's probes: resized to the encoder's input size
    elif meta.get("image_size"):
        data["image_size"] = meta["image_size"]
    e = args.epochs
    milestones = sorted({max(1, round(e * f)) for f in fractions})
    return {"name": f"linear-eval-{meta.get('arch')}-{dataset}", "seed": args.seed, "epochs": e,
            "regime": "linear_probe", "dataset": data, "student": {"checkpoint": str(file)}, "loss": {"ce": 1.0},
            "optim": {"name": "sgd", "lr": args.lr if args.lr is not None else lr(batch), "momentum": 0.9,
                      "nesterov": nesterov, "weight_decay": 0.0},
            "schedule": {"name": "multistep", "milestones": milestones, "gamma": gamma}}


def cmd_linear_eval(args) -> int:
    from kdzoo.config import config_from_data
    from kdzoo.config.load import apply_overrides
    from kdzoo.engine.run_folder import refuse_existing_run
    from kdzoo.regimes import make_engine

    file = encoder_file(args.checkpoint, args.network)
    cfg = config_from_data(apply_overrides(probe_recipe(file, args), args.overrides))
    source = Path(args.checkpoint)
    label = source.name if source.is_dir() else source.stem
    run_dir = Path(args.out or Path("runs") / "linear_eval" / f"{label}-{cfg.dataset.name}")
    refuse_existing_run(run_dir, "kdzoo linear-eval")
    engine = make_engine(cfg, run_dir, quiet=args.quiet)
    summary = engine.fit()
    if engine.dist.is_main:
        print(f"linear eval of {file} on {cfg.dataset.name}: best top1 {summary['best_top1']:.2f} (epoch "
              f"{summary['best_epoch']}), last top1 {summary['last_top1']:.2f}; run folder {run_dir}")
    return 0

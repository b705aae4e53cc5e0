"""The `kdzoo` command line. Input errors print one line and exit with code 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from kdzoo.errors import KdzooError

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        from kdzoo.plugins import load_plugins

        load_plugins()  # installed packages' methods, models and datasets, for every verb
        code = args.func(args) or 0
        sys.stdout.flush()  # a reader that left (`| head`) shows here, not as a message at exit
        return code
    except KdzooError as err:
        print(f"kdzoo: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as stop:  # args: ("SIGTERM" or None[, what continues the work])
        by_sigterm = bool(stop.args) and stop.args[0] == "SIGTERM"
        hint = f"; {stop.args[1]}" if len(stop.args) > 1 else ""
        print(f"kdzoo: {'stopped by SIGTERM' if by_sigterm else 'interrupted'}{hint}", file=sys.stderr)
        return 143 if by_sigterm else 130
    except BrokenPipeError:  # stdout closed by its reader: end quietly, as `yes | head -1` does (128 + SIGPIPE)
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except OSError as err:  # the machine, not the input: disk full, permissions, a vanished folder
        where = f": {err.filename}" if err.filename else ""
        print(f"kdzoo: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1


def _stdout_to_devnull() -> None:
    """Python flushes stdout again at exit: point it at /dev/null so that flush cannot fail too."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture): nothing to flush there
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdzoo", description="Knowledge distillation for PyTorch.")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("list", help="list models, datasets, methods or regimes")
    p.add_argument("what", choices=["models", "datasets", "methods", "regimes"])
    p.set_defaults(func=cmd_list)

    for name, helptext in (("train", "train a model from scratch (teachers, student baselines)"),
                           ("distill", "train a student from a teacher checkpoint (teacher.checkpoint=RUN)"),
                           ("pretrain", "train without labels (regime self_supervised: BYOL / i-Mix)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("-c", "--config", help="YAML recipe")
        p.add_argument("--out", help="run folder (default: runs/<name>)")
        p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
        p.add_argument("--quiet", action="store_true", help="no progress bars; one line per epoch")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.01 seed=3")
        p.set_defaults(func=cmd_train, mode=name)

    p = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on its dataset's test set")
    p.add_argument("--checkpoint", required=True, help="a run folder or a .safetensors checkpoint")
    p.add_argument("--which", default="best", choices=["best", "last"], help="for a run folder")
    p.add_argument("--data-root", help="dataset folder (default: as recorded in the checkpoint)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--heads", action="store_true", help="also each auxiliary head's accuracy (_aux models)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("import-checkpoint",
                       help="convert a RepDistiller/mdistiller/HSAKD .pth(.tar), or torchvision's weights, to kdzoo")
    p.add_argument("path", help=".pth file holding {'model'|'net'|'state_dict': state_dict} or a bare state_dict")
    p.add_argument("--format", choices=["published", "torchvision"], default="published",
                   help="published (RepDistiller/mdistiller; default) or torchvision (e.g. resnet34-333f7ec4.pth: "
                        "arch from the name, 1000 classes, imagenet, hash checked)")
    p.add_argument("--arch", help="zoo arch, or HSAKD's name (mobilenetV2_aux, vgg13_bn_aux, resnet34_imagenet_aux); "
                                  "torchvision: tv:<name>, default from the file name")
    p.add_argument("--peer", type=int, help="which network of an HSAKD online-KD file (net1, net2): 1 or 2")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--dataset")
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--out", required=True, help="run folder to create")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("demo", help="teacher, student and KD student on digits, with a comparison table")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    from kdzoo.data.imagenet_valprep import add_command as add_valprep
    from kdzoo.linear_eval import add_command as add_linear_eval

    add_valprep(sub)

    add_linear_eval(sub)
    _add_bench_commands(sub)
    from kdzoo.sweep.cli import add_commands as add_sweep

    add_sweep(sub)
    from kdzoo.cli_examples import epilog

    for verb, command in sub.choices.items():  # every verb ends its help with examples
        command.epilog = epilog(verb)
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "`kdzoo <command> --help` shows each command's options and examples; docs/ has the guide."
    return parser


def _add_bench_commands(sub) -> None:
    """Benchmark commands live in kdzoo.bench; registered here when that package is present."""
    try:
        from kdzoo.bench.cli import add_commands
    except ImportError:
        return
    add_commands(sub)


# Commands -----------------------------------------------------------------------------------------------------
def cmd_list(args) -> int:
    if args.what == "models":
        from kdzoo.models import MODELS as registry
    elif args.what == "datasets":
        from kdzoo.data import DATASETS as registry
    elif args.what == "methods":
        from kdzoo.distillers import METHODS as registry
    else:
        from kdzoo.regimes import REGIMES as registry
    width = max((len(n) for n in registry.names()), default=0)
    for name in registry.names():
        text = registry.describe(name)
        print(f"{name:<{width}}  {text}".rstrip() if text else name)
    return 0


def cmd_train(args) -> int:
    from kdzoo.checkpoints.run_folder import refuse_existing_run
    from kdzoo.config import load_config

    if args.resume:
        run_dir = Path(args.resume)
        if args.out and Path(args.out) != run_dir:
            raise KdzooError("--resume continues in its own folder; drop --out")
        from kdzoo.engine.resume_rules import RULE, load_resumed_config

        if args.config:
            raise KdzooError(f"--resume continues the recipe saved in the run folder; drop -c ({RULE})")
        cfg = load_resumed_config(run_dir, args.overrides, f"-c RECIPE --out {run_dir}")
    else:
        if not args.config:
            raise KdzooError(f"kdzoo {args.mode}: give a recipe with -c CONFIG (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(args.out or Path("runs") / cfg.name)
        refuse_existing_run(run_dir, f"kdzoo {args.mode}")
    from kdzoo.regimes.names import check_names

    check_names(cfg, args.mode)
    from kdzoo.engine.trainer import (
        make_engine,  # heavy: imported once the recipe is known to be valid
    )

    engine = make_engine(cfg, run_dir, resume=bool(args.resume), quiet=args.quiet)
    summary = engine.fit()
    if engine.dist.is_main:
        from kdzoo.engine.trainer import end_of_run

        print(f"{cfg.name}: {end_of_run(summary)}; run folder {run_dir}")
    from kdzoo.engine.distributed import shutdown

    shutdown(engine.dist)
    return 0


def cmd_eval(args) -> int:
    from kdzoo.checkpoints.load import load_model
    from kdzoo.data import build_dataset, make_loader
    from kdzoo.engine.device import resolve_device
    from kdzoo.program.evaluators import evaluate

    model, meta, file = load_model(args.checkpoint, args.which)
    device = resolve_device(args.device)
    test = build_dataset(meta["dataset"], "test", root=args.data_root or meta.get("dataset_root"),
                         augment=False, image_size=meta.get("image_size"))
    loader = make_loader(test, batch_size=args.batch_size, train=False, seed=0)
    metrics = evaluate(model.to(device), loader, device)
    if args.heads:
        metrics.update(_head_metrics(model, loader, device))
    if args.json:
        print(json.dumps({"checkpoint": str(file), "arch": meta["arch"], "dataset": meta["dataset"], **metrics}))
    else:
        print(f"{file}: {meta['arch']} on {meta['dataset']} test ({metrics['n']} images): "
              f"top1 {metrics['top1']:.2f}  top5 {metrics['top5']:.2f}")
        for key in sorted(k for k in metrics if k.endswith("_top1") and k.startswith("head") and k != "heads_top1"):
            print(f"  {key[:-5]} (4 rotations, logits summed per class): top1 {metrics[key]:.2f}  "
                  f"top5 {metrics[key[:-5] + '_top5']:.2f}")
    return 0


def _head_metrics(model, loader, device) -> dict[str, float]:
    """Each auxiliary head's accuracy (an _aux checkpoint); one line if the model has none."""
    from kdzoo.models.aux import AuxNet, RotatedHeads
    from kdzoo.program.evaluators import HeadsEvaluator, OneLoader

    if not isinstance(model, AuxNet):
        raise KdzooError(f"--heads: {getattr(model, 'kdzoo_arch', type(model).__name__)} has no auxiliary heads")
    heads = RotatedHeads(model).to(device)
    found = HeadsEvaluator(lambda: heads, stream="test", rows_per_sample=4)(OneLoader(loader, device))
    return {key[len("test_"):]: value for key, value in found.items()}


def cmd_import(args) -> int:
    from kdzoo.checkpoints.importer import import_checkpoint

    out = import_checkpoint(args.path, arch=args.arch, num_classes=args.num_classes, dataset=args.dataset,
                            out=args.out, in_channels=args.in_channels, fmt=args.format, peer=args.peer)
    from kdzoo.checkpoints.format import read_meta
    from kdzoo.checkpoints.store import resolve_checkpoint

    print(f"imported {args.path} as {read_meta(resolve_checkpoint(out))['arch']} -> {out}")
    return 0


def cmd_demo(args) -> int:
    from kdzoo.demo import run_demo

    run_demo(Path(args.out), quiet=args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

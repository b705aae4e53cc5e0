"""The examples every `kdzoo <verb> --help` ends with (tests/test_cli_help.py parses each one)."""
from __future__ import annotations

import textwrap

EXAMPLES = {
    "list": ["kdzoo list methods", "kdzoo list models"],
    "train": ["kdzoo train -c configs/digits/teacher.yaml --out runs/teacher",
              "kdzoo train -c configs/digits/student.yaml --out runs/student epochs=10 optim.lr=0.1",
              "kdzoo train --resume runs/student"],
    "distill": ["kdzoo distill -c configs/digits/kd.yaml --out runs/kd teacher.checkpoint=runs/teacher",
                "kdzoo distill -c configs/digits/kd.yaml --out runs/dkd teacher.checkpoint=runs/teacher "
                "'loss={ce: 1.0, dkd: 1.0}' methods.dkd.warmup=5"],
    "pretrain": ["kdzoo pretrain -c configs/digits/self_supervised/byol.yaml --out runs/byol"],
    "eval": ["kdzoo eval --checkpoint runs/kd", "kdzoo eval --checkpoint runs/kd --which last --json"],
    "import-checkpoint": ["kdzoo import-checkpoint ckpt_epoch_240.pth --arch resnet32x4 --num-classes 100 "
                          "--dataset cifar100 --out runs/teachers/resnet32x4",
                          "kdzoo import-checkpoint --format torchvision resnet34-b627a593.pth --out runs/tv-r34"],
    "demo": ["kdzoo demo", "kdzoo demo --out runs/demo2 --quiet"],
    "imagenet-valprep": ["kdzoo imagenet-valprep data/imagenet --labels valprep.sh"],
    "linear-eval": ["kdzoo linear-eval --checkpoint runs/byol --out runs/byol-probe",
                    "kdzoo linear-eval --checkpoint runs/hsakd --dataset stl10 --protocol hsakd --out runs/probe"],
    "bench": ["kdzoo bench -c configs/bench/fashion_mnist.yaml --jobs 2"],
    "report": ["kdzoo report runs/bench/fashion_mnist --out report"],
    "sweep": ["kdzoo sweep -c configs/cifar100/ckd/sweeps/ckd.yaml", "kdzoo sweep -c sweep.yaml --report"],
}
NEEDS = {
    "distill": "A distillation needs a teacher: `teacher.checkpoint=RUN_OR_FILE` in the recipe or on the command "
               "line (a run folder, or a .safetensors file from `kdzoo import-checkpoint`).",
    "train": "Recipes: configs/<dataset>/...; any key can be overridden as section.key=value (docs/reference/"
             "recipes.md).",
}


def epilog(verb: str) -> str:
    lines = [textwrap.fill(NEEDS[verb], 100), ""] if verb in NEEDS else []
    return "\n".join([*lines, "examples:", *(f"  {example}" for example in EXAMPLES.get(verb, []))])

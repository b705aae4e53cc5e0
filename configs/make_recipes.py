"""Write the method recipes from each method's published loss weights (its `recipes.loss`).

    python configs/make_recipes.py          # rewrites configs/{digits,fashion_mnist,cifar100}/...

Hand-written recipes (teachers, student baselines of digits and fashion_mnist) are left alone. A test checks
that the committed recipes equal what this script writes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from kdzoo.bench.anchors import HSAKD, HSAKD_FEW_SHOT, HSAKD_ONLINE, HSAKD_SOURCE, PAIRS, SIMKD, TEACHERS, published
from kdzoo.distillers import METHODS
from kdzoo.models import list_models

ROOT = Path(__file__).resolve().parent
SMALL_LR_STUDENTS = {"MobileNetV2", "ShuffleV1", "ShuffleV2", "ShuffleV2_1_5"}  # RepDistiller: lr 0.01
SIMKD_PAIRS = [("resnet32x4", s) for s in ("resnet8x4", "vgg8", "ShuffleV2_1_5")]
EXTRA_PAIRS = [("wrn_40_2", "wrn_40_1")]

# Short budgets for the CPU datasets; init stages (AB, FT, FSP) shrink with them.
CPU_DATASETS = {
    "digits": {"epochs": 30, "init_epochs": 2, "student": "resnet8", "teacher": "runs/digits-teacher",
               "dataset": {"name": "digits", "batch_size": 64}, "schedule": {"name": "cosine"}, "lr": 0.05,
               "note": "digits-sized budget: under a minute on 2 CPU cores"},
    "fashion_mnist": {"epochs": 15, "init_epochs": 3, "student": "resnet8",
                      "teacher": "runs/bench/fashion_mnist/teacher",
                      "dataset": {"name": "fashion_mnist", "batch_size": 64}, "schedule": {"name": "cosine"},
                      "lr": 0.05, "note": "CPU recipe; the leaderboard (configs/bench) runs it on a subset"},
}


# FSP needs equal channel counts stage by stage: the digits teacher (resnet32x4) fits resnet8x4, not resnet8.
# DIST+'s map terms need equal last stage maps (no adapter), so do FSP's: the same student there.
CPU_STUDENT_OVERRIDES = {("fsp", "digits"): "resnet8x4", ("dist_plus", "digits"): "resnet8x4"}
# SemCKD's nine pair projectors (3x3 convs at twice the resnet32x4 teacher's widths) make a digits epoch ~4 s:
# fewer epochs keep its digits recipe under a minute.
CPU_EPOCH_OVERRIDES = {("semckd", "digits"): 12}


def recipe_rows() -> dict[str, tuple[type, dict[str, float]]]:
    """Every recipe row: a method's own weights, plus its variants (e.g. crd_kd)."""
    rows = {}
    for name in METHODS.names():
        cls = METHODS.get(name)
        if not cls.recipes.loss or cls.student_needs.heads or cls.recipes.few_sample:
            continue  # methods on _aux models (hsakd) and few-sample ones (ckd) have their own recipes
        if cls.recipes.apart:
            continue  # DS-SRD's pieces: write_dssrd
        rows[name] = (cls, dict(cls.recipes.loss))
        for variant, loss in cls.recipes.variants.items():
            rows[variant] = (cls, dict(loss))
    return rows


def row_params(cls, row: str) -> dict:
    """The `methods:` section a variant row sets (e.g. kd_ls: T 2, standardize), else {}."""
    params = cls.recipes.variant_params.get(row)
    if not params and cls.term_names() == ():  # named by its section alone (DOT): its published parameters
        params = dataclasses.asdict(cls.Params())
    return {"methods": {cls.name: dict(params)}} if params else {}


def _init_params(cls, epochs: int) -> dict:
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    return {"init_epochs": epochs} if "init_epochs" in fields else {}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _header(cls, row: str, extra: str) -> str:
    lines = [f"# {row}: {cls.description}."]
    if cls.paper:
        lines.append(f"# {cls.paper}")
    lines.append(f"# {extra}")
    lines.append("# Written by configs/make_recipes.py from the method's published loss weights; edit there.")
    return "\n".join(lines) + "\n"


def _dump(path: Path, header: str, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110))


def cpu_recipe(dataset: str, row: str, cls, loss: dict) -> tuple[str, dict]:
    spec = CPU_DATASETS[dataset]
    data = {"name": f"{dataset}-{row}", "seed": 0, "epochs": CPU_EPOCH_OVERRIDES.get((row, dataset), spec["epochs"]), "dataset": {**spec["dataset"], **cls.recipes.dataset},
            "student": {"arch": CPU_STUDENT_OVERRIDES.get((row, dataset), spec["student"])},
            "teacher": {"checkpoint": spec["teacher"]}, "loss": loss}
    if teacher_free(cls):
        del data["teacher"]
    params = _init_params(cls, spec["init_epochs"])
    if params:
        data["methods"] = {cls.name: params}
    data = _merge(data, row_params(cls, row))
    data.update({"optim": {"lr": spec["lr"], "momentum": 0.9, "weight_decay": 5.0e-4},
                 "schedule": dict(spec["schedule"])})
    return _header(cls, row, spec["note"]), data


def cifar_recipe(row: str, cls, loss: dict, teacher: str, student: str) -> tuple[str, dict]:
    data = {"name": f"cifar100-{row}-{teacher}-{student}", "seed": 0, "epochs": 240,
            "dataset": {"name": "cifar100", "root": "./data", "download": True, "batch_size": 64,
                        **cls.recipes.dataset},
            "student": {"arch": student}, "teacher": {"checkpoint": f"runs/cifar100/teachers/{teacher}"},
            "loss": loss,
            "optim": {"lr": 0.01 if student in SMALL_LR_STUDENTS else 0.05, "momentum": 0.9,
                      "weight_decay": 5.0e-4},
            "schedule": {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1}}
    data = _merge(data, cls.pair_overrides(teacher, student))
    data = _merge(data, row_params(cls, row))  # a variant's own parameters win over the pair's (LS: beta x 9)
    anchor = published(row, teacher, student)
    note = (f"published top-1 {anchor[0]:.2f} ({anchor[1]}, teacher {TEACHERS.get(teacher, '?')})" if anchor
            else "no published CIFAR-100 number for this pair in our anchors")
    return _header(cls, row, note), data


def teacher_free(cls) -> bool:
    """A method that distils from the student itself (USKD); DOT reads no teacher but steps a KD loss that does."""
    return not any(METHODS.get(m).needs_teacher() for m in {cls.name, *(_term_method(t) for t in cls.recipes.loss)})


def _term_method(term: str) -> str:
    from kdzoo.distillers import method_for_term

    return method_for_term(term).name


def cifar_pairs(row: str, cls=None) -> list[tuple[str, str]]:
    if cls is not None and teacher_free(cls):
        return []  # no teacher pairs; its CPU and ImageNet recipes train the student alone
    if cls is not None and cls.recipes.pairs is not None:  # the pairs the method can take (CAT-KD, DIST+)
        return list(cls.recipes.pairs)
    pairs = [p for p in PAIRS.values() if published(row, *p)]
    pairs += [p for p in EXTRA_PAIRS + SIMKD_PAIRS if published(row, *p) and p not in pairs]
    if not pairs:  # methods without a CIFAR-100 anchor (ReviewKD, DIST): the ten standard pairs
        pairs = list(PAIRS.values())
    return pairs


def write_all(root: Path = ROOT) -> list[Path]:
    written = []
    for row, (cls, loss) in recipe_rows().items():
        for dataset in CPU_DATASETS:
            header, data = cpu_recipe(dataset, row, cls, loss)
            path = root / dataset / f"{row}.yaml"
            _dump(path, header, data)
            written.append(path)
        for teacher, student in cifar_pairs(row, cls):
            header, data = cifar_recipe(row, cls, loss, teacher, student)
            path = root / "cifar100" / row / f"{teacher}-{student}.yaml"
            _dump(path, header, data)
            written.append(path)
    written += write_cifar_baselines(root)
    written += write_hsakd(root)
    written += write_ckd(root)
    written += write_dssrd(root)
    written += write_imagenet(root)
    written += write_imagenet_distillers(root)
    return written


# ImageNet ResNet34 -> ResNet18 (mdistiller's configs/imagenet/r34_r18 settings; batch 256 at lr 0.1, their 512
# at 0.2 scaled linearly): loss weights and method parameters per row.
IMAGENET_ROWS = {
    "kd": ({"ce": 0.5, "kd": 0.5}, {"kd": {"T": 1.0}}),
    # r34_r18/dkd.yaml sets CE_WEIGHT 1, BETA 0.5, T 1, WARMUP 1 and leaves ALPHA at cfg.py's 1.0
    "dkd": ({"ce": 1.0, "dkd": 1.0}, {"dkd": {"alpha": 1.0, "beta": 0.5, "T": 1.0, "warmup": 1.0}}),
    "reviewkd": ({"ce": 1.0, "reviewkd": 1.0}, {"reviewkd": {"warmup_epochs": 1.0}}),
    "crd": ({"ce": 1.0, "crd": 0.8}, {"crd": {"nce_k": 16384}}),
    "dist": ({"ce": 1.0, "dist": 1.0}, {"dist": {"beta": 1.0, "gamma": 1.0, "tau": 1.0}}),  # DIST's ImageNet setting
    # yzd-v/cls_KD configs/distillers/imagenet/res34_distill_res18_img.py: NKD temp 1.0, gamma 1.5, weight 1
    "nkd": ({"ce": 1.0, "nkd": 1.0}, {"nkd": {"T": 1.0, "gamma": 1.5}}),
    # mdistiller configs/imagenet/r34_r18/dot.yaml: KD (CE 0.5, KD 0.5, T 1) with DOT delta 0.09
    "dot": ({"ce": 0.5, "kd": 0.5}, {"kd": {"T": 1.0}, "dot": {"delta": 0.09}}),
    # zhengli97/CTKD ImageNet: -r 1 -a 1 (KD with the learned temperature), the curriculum over 5 epochs
    "ctkd": ({"ce": 1.0, "ctkd": 1.0}, {"ctkd": {"decay_loops": 5.0}}),
    # KD++ (WangYZ1608/Knowledge-Distillation-via-ND) R34 -> R18: cls 1, kd 2.5 (T 1), nd 1
    "nd": ({"ce": 1.0, "kd": 2.5, "nd": 1.0}, {"kd": {"T": 1.0}}),
    # GzyAftermath/CAT-KD configs/imagenet/r34_r18: CAT_loss_weight 0.5, resolution 4, no normalisation
    "catkd": ({"ce": 1.0, "catkd": 0.5}, {"catkd": {"resolution": 4, "normalize": False}}),
    # torchdistill configs/official/ilsvrc2012/.../srd and sample dist_plus: CE 1 + SRD 1; CE 1 + DIST+ 2
    "srd": ({"ce": 1.0, "srd": 1.0}, {"srd": {"exponent": 4.0, "T": 1.0}}),
    "dist_plus": ({"ce": 1.0, "dist_plus": 2.0}, {}),
    # USKD trains ResNet18 alone (yzd-v/cls_KD res18_sd_img.py: alpha 1, beta 0.1, mu 0.005)
    "uskd": ({"ce": 1.0, "uskd": 1.0}, {}),
}
IMAGENET_DATA = {"name": "imagenet", "root": "./data/imagenet", "batch_size": 256, "num_workers": 8}


def write_imagenet(root: Path = ROOT) -> list[Path]:
    from kdzoo.bench.anchors import IMAGENET, IMAGENET_TEACHER
    from kdzoo.distillers import METHODS

    written = []
    for row, (loss, methods) in IMAGENET_ROWS.items():
        top1, source = IMAGENET[row]
        alone = teacher_free(METHODS.get(row))  # USKD: the student distils from itself
        pair, file = ("ResNet18 alone", "resnet18") if alone else ("ResNet34 -> ResNet18", "resnet34-resnet18")
        header = _header(METHODS.get(row), row, f"ImageNet {pair}: published top-1 {top1:.2f} ({source}; " + (
            "" if alone else f"teacher {IMAGENET_TEACHER}, ") + f"student alone {IMAGENET['student'][0]})") + (
            "" if alone else
            "# Teacher: kdzoo import-checkpoint --format torchvision resnet34-b627a593.pth (or the older\n"
            "# resnet34-333f7ec4.pth) --out runs/imagenet/teachers/resnet34.") + (
            f"{'#' if alone else ''} Several GPUs: torchrun --nproc_per_node 8\n"
            f"# -m kdzoo.cli {'train' if alone else 'distill'} -c configs/imagenet/{row}/{file}.yaml "
            "dataset.batch_size=32 (batch_size\n# is per process: 8 x 32 = the 256 that lr 0.1 is set for).\n")
        data = {"name": f"imagenet-{row}-{file}", "seed": 0, "epochs": 100, "dataset": dict(IMAGENET_DATA),
                "student": {"arch": "tv:resnet18"}, "teacher": {"checkpoint": "runs/imagenet/teachers/resnet34"},
                "loss": loss, "methods": methods,
                "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1.0e-4},
                "schedule": {"name": "multistep", "milestones": [30, 60, 90], "gamma": 0.1}}
        if alone:
            del data["teacher"]
        path = root / "imagenet" / row / f"{file}.yaml"
        _dump(path, header, data)
        written.append(path)
    return written


# giakoumoglou/distillers imagenet/scripts: teachers from scratch (run_vanilla.sh) and SimKD/RRD/DCD students of
# their ResNet50 teacher (run_distill.sh): 120 epochs, batch 256, lr 0.1 x0.1 at 30/60/90, weight decay 1e-4.
DISTILLERS_IMAGENET = {"epochs": 120, "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1.0e-4},
                       "schedule": {"name": "multistep", "milestones": [30, 60, 90], "gamma": 0.1}}
DISTILLERS_SOURCE = "giakoumoglou/distillers imagenet/scripts"


def write_imagenet_distillers(root: Path = ROOT) -> list[Path]:
    """ImageNet teachers trained from scratch and the SimKD/RRD/DCD ResNet50 -> ResNet18 students, with\n    distillers' settings (their -c/-d/-b flags are the ce/kd/method weights of each method's recipes.loss)."""
    from kdzoo.distillers import METHODS

    written = []
    for arch in ("resnet18", "resnet34", "resnet50"):
        data = {"name": f"imagenet-teacher-{arch}", "seed": 0, "epochs": DISTILLERS_IMAGENET["epochs"],
                "dataset": dict(IMAGENET_DATA), "model": {"arch": f"tv:{arch}"}, "loss": {"ce": 1.0},
                "optim": dict(DISTILLERS_IMAGENET["optim"]), "schedule": dict(DISTILLERS_IMAGENET["schedule"])}
        path = root / "imagenet" / "teachers" / f"{arch}.yaml"
        _dump(path, f"# ImageNet teacher tv:{arch} from scratch ({DISTILLERS_SOURCE}/run_vanilla.sh: train_teacher.py "
                    "--epochs 120 --learning_rate 0.1\n# --lr_decay_epochs 30,60,90 --weight_decay 1e-4 --batch_size "
                    f"256).\n#   kdzoo train -c configs/imagenet/teachers/{arch}.yaml --out runs/imagenet/teachers/"
                    f"{arch}\n# Several GPUs: torchrun --nproc_per_node 8 -m kdzoo.cli train ... dataset.batch_size=32 "
                    "(per process).\n# Written by configs/make_recipes.py.\n", data)
        written.append(path)
    for row in ("simkd", "rrd", "dcd"):
        cls = METHODS.get(row)
        data = {"name": f"imagenet-{row}-resnet50-resnet18", "seed": 0, "epochs": DISTILLERS_IMAGENET["epochs"],
                "dataset": dict(IMAGENET_DATA), "student": {"arch": "tv:resnet18"},
                "teacher": {"checkpoint": "runs/imagenet/teachers/resnet50"}, "loss": dict(cls.recipes.loss),
                "optim": dict(DISTILLERS_IMAGENET["optim"]), "schedule": dict(DISTILLERS_IMAGENET["schedule"])}
        header = _header(cls, row, f"ImageNet ResNet50 -> ResNet18 as {DISTILLERS_SOURCE}/run_distill.sh (no published "
                                   "ImageNet top-1 in our anchors)") + (
            "# Teacher: configs/imagenet/teachers/resnet50.yaml, or kdzoo import-checkpoint --format torchvision\n"
            "# resnet50-0676ba61.pth --out runs/imagenet/teachers/resnet50. Several GPUs: torchrun --nproc_per_node 8\n"
            f"# -m kdzoo.cli distill -c configs/imagenet/{row}/resnet50-resnet18.yaml dataset.batch_size=32.\n")
        path = root / "imagenet" / row / "resnet50-resnet18.yaml"
        _dump(path, header, data)
        written.append(path)
    return written


CIFAR_DATA = {"name": "cifar100", "root": "./data", "download": True, "batch_size": 64}
HSAKD_SGD = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4, "nesterov": True}
HSAKD_SCHEDULE = {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1}


# HSAKD's MobileNetV2 (models/mobilenetv2.py) has a stride-1 stem, unlike RepDistiller's mobile_half that
# `MobileNetV2` is: HSAKD's recipes train `MobileNetV2_hsakd`; every other HSAKD arch is the zoo's.
HSAKD_ZOO = {"MobileNetV2": "MobileNetV2_hsakd"}


def hsakd_arch(arch: str) -> str:
    return HSAKD_ZOO.get(arch, arch)


def _has_aux(arch: str) -> bool:
    return f"{hsakd_arch(arch)}_aux" in list_models()


def write_hsakd(root: Path = ROOT) -> list[Path]:
    """HSAKD (winycg/HSAKD) on CIFAR-100: both teacher options, the published student pairs, few-shot and online
    mutual recipes, for the archs that have an _aux model."""
    written = []
    out = root / "cifar100" / "hsakd"
    pairs = [p for p in HSAKD if _has_aux(p[0]) and _has_aux(p[1])]
    for teacher in sorted({t for t, _ in HSAKD if _has_aux(t)}):
        base = {"seed": 0, "dataset": dict(CIFAR_DATA), "model": {"arch": f"{hsakd_arch(teacher)}_aux"},
                "loss": {"ce": 1.0, "aux_ce": 1.0}, "optim": dict(HSAKD_SGD)}
        option2 = {"name": f"cifar100-hsakd-teacher-{teacher}", "epochs": 240, **base,
                   "schedule": dict(HSAKD_SCHEDULE)}
        option1 = {"name": f"cifar100-hsakd-teacher-{teacher}-opt1", "epochs": 100, **base,
                   "schedule": {"name": "multistep", "milestones": [30, 60, 90], "gamma": 0.1}}
        option1["model"] = {"arch": f"{hsakd_arch(teacher)}_aux", "checkpoint": f"runs/cifar100/teachers/{teacher}",
                            "freeze": ["backbone"]}
        for data, suffix, note in (
                (option2, "", "option (2), Teacher*: backbone and heads jointly from scratch"),
                (option1, "_opt1", f"option (1): the trained plain {teacher} (configs/cifar100/teachers/"
                                   f"{teacher}.yaml) as a frozen backbone; the heads alone train")):
            path = out / "teachers" / f"{teacher}{suffix}.yaml"
            _dump(path, f"# HSAKD teacher, {note}.\n#   kdzoo train -c "
                        f"configs/cifar100/hsakd/teachers/{teacher}{suffix}.yaml --out runs/cifar100/hsakd/"
                        f"teachers/{teacher}{suffix}\n# Written by configs/make_recipes.py.\n", data)
            written.append(path)
    for teacher, student in pairs:
        for suffix, index, label in (("", 1, "HSAKD*, teacher option (2)"), ("_opt1", 0, "HSAKD, teacher option (1)")):
            data = {"name": f"cifar100-hsakd-{teacher}-{student}{suffix}", "seed": 0, "epochs": 240,
                    "dataset": dict(CIFAR_DATA), "student": {"arch": f"{hsakd_arch(student)}_aux"},
                    "teacher": {"checkpoint": f"runs/cifar100/hsakd/teachers/{teacher}{suffix}"},
                    "loss": {"ce": 1.0, "hsakd": 1.0, "hsakd_logits": 1.0}, "methods": {"hsakd": {"T": 3.0}},
                    "optim": {**HSAKD_SGD, "lr": 0.01 if student in SMALL_LR_STUDENTS else 0.05},
                    "schedule": dict(HSAKD_SCHEDULE)}
            path = out / f"{teacher}-{student}{suffix}.yaml"
            layout = (f"\n# {hsakd_arch(student)}: HSAKD's MobileNetV2 layout (stride-1 stem), not RepDistiller's "
                      "mobile_half." if student in HSAKD_ZOO else "")
            _dump(path, f"# HSAKD student, {label}: published top-1 {HSAKD[(teacher, student)][index]:.2f} "
                        f"({HSAKD_SOURCE}).{layout}\n# Written by configs/make_recipes.py.\n", data)
            written.append(path)
    if ("resnet56", "resnet20") in pairs:
        for fraction, top1 in HSAKD_FEW_SHOT.items():
            if fraction == 1.0:
                continue
            data = {"name": f"cifar100-hsakd-few-shot-{round(100 * fraction)}", "seed": 0, "epochs": 240,
                    "dataset": {**CIFAR_DATA, "subset": {"size": fraction}}, "student": {"arch": "resnet20_aux"},
                    "teacher": {"checkpoint": "runs/cifar100/hsakd/teachers/resnet56"},
                    "loss": {"ce": 1.0, "hsakd": 1.0, "hsakd_logits": 1.0}, "methods": {"hsakd": {"T": 3.0}},
                    "optim": dict(HSAKD_SGD), "schedule": dict(HSAKD_SCHEDULE)}
            path = out / "few_shot" / f"resnet56-resnet20-{round(100 * fraction)}.yaml"
            _dump(path, f"# HSAKD* few-shot: a stratified {fraction:.0%} of the training set; published top-1 "
                        f"{top1:.2f} ({HSAKD_SOURCE}).\n# Written by configs/make_recipes.py.\n", data)
            written.append(path)
    for arch, top1 in HSAKD_ONLINE.items():
        if not _has_aux(arch):
            continue
        data = {"name": f"cifar100-mutual-hsakd-{arch}", "seed": 0, "epochs": 240, "regime": "mutual",
                "dataset": dict(CIFAR_DATA), "peers": [{"arch": f"{hsakd_arch(arch)}_aux"} for _ in range(2)],
                "loss": {"ce": 1.0, "aux_ce": 1.0, "hsakd": 1.0, "hsakd_logits": 1.0},
                "methods": {"hsakd": {"T": 3.0}},
                "optim": {**HSAKD_SGD, "lr": 0.01 if arch in SMALL_LR_STUDENTS else 0.05},
                "schedule": dict(HSAKD_SCHEDULE)}
        path = root / "cifar100" / "mutual" / f"hsakd-{arch}.yaml"
        _dump(path, f"# Online mutual HSAKD (HSSAKD), two {hsakd_arch(arch)}_aux peers from scratch: published top-1 "
                    f"of one network {top1:.2f} ({HSAKD_SOURCE}).\n# Written by configs/make_recipes.py.\n", data)
        written.append(path)
    return written


def write_cifar_baselines(root: Path = ROOT) -> list[Path]:
    """Teachers and student baselines with RepDistiller's train_teacher.py recipe."""
    written = []
    students = sorted({s for _, s in PAIRS.values()} | {s for _, s in SIMKD_PAIRS + EXTRA_PAIRS})
    for kind, archs in (("teachers", sorted(TEACHERS)), ("students", students)):
        for arch in archs:
            data = {"name": f"cifar100-{arch}", "seed": 0, "epochs": 240,
                    "dataset": {"name": "cifar100", "root": "./data", "download": True, "batch_size": 64},
                    "model": {"arch": arch}, "loss": {"ce": 1.0},
                    "optim": {"lr": 0.01 if arch in SMALL_LR_STUDENTS else 0.05, "momentum": 0.9,
                              "weight_decay": 5.0e-4},
                    "schedule": {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1}}
            if kind == "teachers":
                note = (f"# published teacher top-1 {TEACHERS[arch]:.2f} (RepDistiller); train with\n"
                        f"#   kdzoo train -c configs/cifar100/teachers/{arch}.yaml "
                        f"--out runs/cifar100/teachers/{arch}\n")
            else:
                value = next((v for (row, t, s), v in _student_rows() if s == arch), None)
                note = (f"# published student baseline top-1 {value:.2f}\n" if value else
                        "# student baseline (no published number in our anchors)\n")
            path = root / "cifar100" / kind / f"{arch}.yaml"
            _dump(path, note + "# Written by configs/make_recipes.py.\n", data)
            written.append(path)
    return written


# CKD (alextxu/ckd): its three pairs, the few-sample rows and their loss weights (train_student.py defaults:
# w_cls 1; relational w_rel crd 0.8, rkd 1, dist 2, ckd/mixup 1; w_kd 1 for the relational and white-box rows;
# w_inter hint 100, vid 1, correlation 0.02). ckd_inter and the white-box rows read teacher stage maps: live teacher.
CKD_PAIRS = [("resnet110", "resnet32"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8")]
CKD_INNER = {"hint": ("fitnet", 100.0), "vid": ("vid", 1.0), "cc": ("cc", 0.02)}
CKD_ROWS = {
    "student": {"ce": 1.0},
    "kd": {"ce": 1.0, "kd": 1.0},
    "ckd": {"ckd_cls": 1.0, "ckd_rel": 1.0},
    "ckd_add": {"ckd_add_cls": 1.0, "ckd_add_rel": 1.0},
    "ckd_mixup": {"ckd_mixup_cls": 1.0, "ckd_mixup_rel": 1.0},
    "mixup": {"mixup_cls": 1.0, "mixup_rel": 1.0},
    "mixup3": {"mixup3_cls": 1.0, "mixup3_rel": 1.0},
    "crd": {"ce": 1.0, "kd": 1.0, "crd": 0.8},
    "rkd": {"ce": 1.0, "kd": 1.0, "rkd": 1.0},
    "dist": {"ce": 1.0, "kd": 1.0, "dist": 2.0},
    **{f"ckd_inter_{k}": {"ckd_inter_cls": 1.0, "ckd_inter_rel": 1.0, "ckd_inter_feat": w}
       for k, (_, w) in CKD_INNER.items()},
    **{f"white_box_{k}": {"ce": 1.0, "kd": 1.0, m: w} for k, (m, w) in CKD_INNER.items()},
}
CKD_SCHEDULE = {"name": "plateau", "patience": 50, "factor": 0.1, "cuts": 2}
CKD_SIZES = [2000, 2500, 3000, 3500, 4000, 4500, 5000, 6000]
CKD_SWEEPS = {  # sweep file -> (rows, subset sizes): CKD's ckd.yml, mixup.yml, relational.yml, white_box*.yml
    "ckd": (["ckd"], CKD_SIZES), "mixup": (["mixup", "mixup3"], CKD_SIZES),
    "relational": (["rkd", "dist", "crd"], CKD_SIZES),
    "white_box_ckd": ([f"ckd_inter_{k}" for k in CKD_INNER], [2000, 3000, 4000, 5000, 6000]),
    "white_box": ([f"white_box_{k}" for k in CKD_INNER], [2000, 3000, 4000, 5000, 6000])}


def ckd_recipe(row: str, dataset: dict, student: str, teacher: str, checkpoint: str, subset: int,
               lr: float, epochs: int, schedule: dict) -> dict:
    loss = CKD_ROWS[row]
    data = {"name": f"{dataset['name']}-few-{row}-{student}", "seed": 0, "epochs": epochs,
            "dataset": {**dataset, "subset": {"size": subset, "val": 0.2, "few_sample": True}},
            "student": {"arch": student}}
    live = row.startswith(("ckd_inter", "white_box"))
    if row != "student":
        data["teacher"] = {"checkpoint": checkpoint, **({} if live else {"cache": True})}
    data["loss"] = dict(loss)
    if row.startswith("ckd_inter"):
        data["methods"] = {"ckd_inter": {"inner": row.rsplit("_", 1)[1]}}
    data.update({"optim": {"lr": lr, "momentum": 0.9, "weight_decay": 5.0e-4}, "schedule": dict(schedule),
                 "engine": {"eval_every": 1}})
    return data


def write_ckd(root: Path = ROOT) -> list[Path]:
    """CKD's CIFAR-100 few-sample recipes (every row on its three pairs at 2,000 images) and the sweep files that
    mirror its wandb grids; the Fashion-MNIST few-sample leaderboard's recipes and sweeps."""
    written = []
    out = root / "cifar100" / "ckd"
    cifar = {"name": "cifar100", "root": "./data", "download": True, "batch_size": 64}
    for row in CKD_ROWS:
        for teacher, student in CKD_PAIRS:
            data = ckd_recipe(row, cifar, student, teacher, f"runs/cifar100/teachers/{teacher}", 2000, 0.05, 1000,
                              CKD_SCHEDULE)
            path = out / row / f"{teacher}-{student}.yaml"
            _dump(path, f"# CKD few-sample row {row}: {teacher} -> {student} on 2,000 CIFAR-100 images (80/20 "
                        "train/val), validation every epoch of the 1,600 train images, plateau lr cuts.\n"
                        "# The lr and subset size are swept: configs/cifar100/ckd/sweeps/.\n"
                        "# Written by configs/make_recipes.py.\n", data)
            written.append(path)
    for name, (rows, sizes) in CKD_SWEEPS.items():
        recipes = [f"configs/cifar100/ckd/{row}/{t}-{s}.yaml" for row in rows for t, s in CKD_PAIRS]
        grid = {"recipe": recipes, "optim.lr": [0.1, 0.05, 0.025], "dataset.subset.size": sizes}
        if name == "ckd":
            grid["methods.ckd.pos_and_neg"] = [2, 3]
        sweep = {"name": f"cifar100-ckd-{name}", "grid": grid, "seeds": [1, 2, 3],
                 "out": f"runs/sweeps/cifar100-ckd-{name}"}
        path = out / "sweeps" / f"{name}.yaml"
        _dump(path, f"# CKD's {name}.yml grid (alextxu/ckd) as a kdzoo sweep:\n#   kdzoo sweep -c "
                    f"configs/cifar100/ckd/sweeps/{name}.yaml --jobs 2   (workers elsewhere: add --worker "
                    "--storage URL)\n# Written by configs/make_recipes.py.\n", sweep)
        written.append(path)
    written += write_fashion_mnist_ckd(root)
    return written


FMNIST_FEW_ROWS = {"student": "student", "kd": "kd", "ckd": "ckd", "ckd_21": "ckd", "mixup": "mixup",
                   "mixup3": "mixup3", "dist": "dist", "rkd": "rkd", "crd": "crd"}
FMNIST_FEW = {"name": "fashion_mnist", "batch_size": 64}
FMNIST_FEW_SCHEDULE = {"name": "plateau", "patience": 3, "factor": 0.1, "cuts": 2}


def write_fashion_mnist_ckd(root: Path = ROOT) -> list[Path]:
    """The few-sample leaderboard on Fashion-MNIST (benchmarks/few_sample.py): resnet8 from the bench teacher."""
    written = []
    for row, base in FMNIST_FEW_ROWS.items():
        data = ckd_recipe(base, FMNIST_FEW, "resnet8", "resnet32", "runs/bench/fashion_mnist/teacher", 1000, 0.05,
                          40, FMNIST_FEW_SCHEDULE)
        data["name"] = f"fashion_mnist-few-{row}"
        if row == "ckd_21":
            data["methods"] = {"ckd": {"pos_and_neg": 3}}
        path = root / "fashion_mnist" / "ckd" / f"{row}.yaml"
        _dump(path, f"# Few-sample leaderboard row {row}: resnet8 from the Fashion-MNIST bench teacher on 1,000 or "
                    "2,000 images (80/20), plateau schedule (patience 3 validations, 2 cuts, at most 40 epochs).\n"
                    "# Written by configs/make_recipes.py.\n", data)
        written.append(path)
        sweep = {"name": f"fashion_mnist-few-{row}", "recipe": f"configs/fashion_mnist/ckd/{row}.yaml",
                 "grid": {"dataset.subset.size": [1000, 2000], "optim.lr": [0.1, 0.05, 0.025]}, "seeds": [0, 1, 2],
                 "out": f"runs/sweeps/fashion_mnist-few-{row}"}
        path = root / "fashion_mnist" / "ckd" / "sweeps" / f"{row}.yaml"
        _dump(path, f"# lr sweep of the few-sample row {row}:\n#   kdzoo sweep -c configs/fashion_mnist/ckd/sweeps/"
                    f"{row}.yaml --jobs 2\n# Written by configs/make_recipes.py.\n", sweep)
        written.append(path)
    return written


# DS-SRD (AiXia520/DS-SRD). The augmentation script's total: r CE + a augment + b CRD + c proto, 0.1/0.9/0.8/0.8.
DSSRD_AUGMENT_LOSS = {"ce": 0.1, "augment": 0.9, "crd": 0.8, "proto": 0.8}
DSSRD_MODES = {"identity": {"mode": "identity"}, "flip": {"mode": "flip"}, "crop_flip": {"mode": "crop+flip"},
               "cutout": {"mode": "cutout"}, "autoaugment": {"mode": "autoaugment"}, "mixup": {"mode": "mixup"},
               "cutmix": {"mode": "cutmix"},
               "cutmix_pick_student_entropy": {"mode": "cutmix_pick", "n_run": 2, "criterion": "student_entropy"},
               "cutmix_pick_teacher_entropy": {"mode": "cutmix_pick", "n_run": 2, "criterion": "teacher_entropy"}}
# The supervised double-student total: gamma CE + alpha KD(s(x), t(x2)) + beta CRD + beta_c proto, plus the strong
# student's mixup CE; the proto key is the student's second view.
DSSRD_DOUBLE_LOSS = {"ce": 1.0, "kd": 1.0, "crd": 0.8, "proto": 0.8, "strong.mixup_ce": 1.0}
DSSRD_DOUBLE_METHODS = {"kd": {"teacher_view": "x2"}, "proto": {"key_network": "student", "key_view": "x2"}}
DSSRD_PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("resnet32x4", "ShuffleV1"),
               ("wrn_40_2", "ShuffleV1")]
TWO_VIEWS = {"x": "jitter", "x2": "jitter"}
DSSRD_HEADER = "# DS-SRD ({what}).\n# {command}\n# Written by configs/make_recipes.py (write_dssrd); edit there.\n"


def _augment_methods(mode: dict) -> dict:
    return {"augment": {**mode, "weights": [1.0, 0.0, 1.0], "teacher_target": True}}


def write_dssrd(root: Path = ROOT) -> list[Path]:
    """DS-SRD on CIFAR-100 (the README's 9 augmentation commands, its 4 double-student pairs, a CNN-Transformer
    student), the Fashion-MNIST leaderboard rows and the digits recipes the CLI tests run."""
    written = []
    out = root / "cifar100" / "dssrd"
    multistep = {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1}
    for row, mode in DSSRD_MODES.items():
        data = {"name": f"cifar100-dssrd-augment-{row}", "seed": 0, "epochs": 240, "dataset": dict(CIFAR_DATA),
                "student": {"arch": "wrn_16_2"}, "teacher": {"checkpoint": "runs/cifar100/teachers/wrn_40_2"},
                "loss": dict(DSSRD_AUGMENT_LOSS),
                "methods": {**_augment_methods(mode), "proto": {"warmup_epochs": 10}, "crd": {"feat_dim": 128}},
                "optim": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4}, "schedule": dict(multistep)}
        path = out / "augment" / f"{row}.yaml"
        _dump(path, DSSRD_HEADER.format(what=f"with data augmentation, --mix_mode {mode['mode']}",
                                        command=f"kdzoo distill -c configs/cifar100/dssrd/augment/{row}.yaml"), data)
        written.append(path)
    for teacher, student in DSSRD_PAIRS:
        data = {"name": f"cifar100-dssrd-{teacher}-{student}", "seed": 0, "epochs": 240, "regime": "double_student",
                "dataset": {**CIFAR_DATA, "batch_size": 128, "views": dict(TWO_VIEWS)},
                "student": {"arch": student}, "teacher": {"checkpoint": f"runs/cifar100/teachers/{teacher}"},
                "loss": dict(DSSRD_DOUBLE_LOSS), "methods": {k: dict(v) for k, v in DSSRD_DOUBLE_METHODS.items()},
                "optim": {"lr": 0.01 if student in SMALL_LR_STUDENTS else 0.05, "momentum": 0.9,
                          "weight_decay": 5.0e-4},
                "schedule": {"name": "cosine", "warmup_epochs": 5}}
        path = out / "double_student" / f"{teacher}-{student}.yaml"
        _dump(path, DSSRD_HEADER.format(what="double student: weak student, strong student of the teacher's arch, "
                                             "EMA teacher",
                                        command=f"kdzoo distill -c configs/cifar100/dssrd/double_student/"
                                                f"{teacher}-{student}.yaml"), data)
        written.append(path)
    data = {"name": "cifar100-dssrd-trans-resnet32x4-resnet8x4_trans", "seed": 0, "epochs": 240,
            "dataset": dict(CIFAR_DATA), "student": {"arch": "resnet8x4_trans"},
            "teacher": {"checkpoint": "runs/cifar100/teachers/resnet32x4"},
            "loss": {"ce": 1.0, "kd": 1.0, "crd": 0.8, "trans_ce": 1.0, "trans_kd": 1.0},
            "optim": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4}, "schedule": dict(multistep)}
    path = out / "trans" / "resnet32x4-resnet8x4_trans.yaml"
    _dump(path, DSSRD_HEADER.format(what="CNN-Transformer student; the CNN branch deploys as resnet8x4",
                                    command="kdzoo distill -c configs/cifar100/dssrd/trans/resnet32x4-resnet8x4_trans.yaml"),
          data)
    written.append(path)
    written += _dssrd_cpu(root, "fashion_mnist", clusters=[30, 48, 60], warmup=2)
    written += _dssrd_cpu(root, "digits", clusters=[10, 20], warmup=1)
    return written


def _dssrd_cpu(root: Path, dataset: str, clusters: list, warmup: int) -> list[Path]:
    """The leaderboard rows (crd_proto, dssrd, kd_cutmix, kd_cutmix_pick, crd_kd_cutmix_pick) and a
    CNN-Transformer student on a CPU dataset; K scaled to its training set as DS-SRD's 500-1000 to CIFAR's 50k."""
    spec = CPU_DATASETS[dataset]
    proto = {"clusters": clusters, "warmup_epochs": warmup}
    pick = DSSRD_MODES["cutmix_pick_student_entropy"]
    rows = {
        "crd_proto": ({"ce": 1.0, "kd": 1.0, "crd": 0.8, "proto": 0.8}, {"proto": dict(proto)}, {}),
        "dssrd": (dict(DSSRD_DOUBLE_LOSS), {"kd": {"teacher_view": "x2"}, "proto": {
            **proto, "key_network": "student", "key_view": "x2"}}, {"regime": "double_student"}),
        "kd_cutmix": ({"ce": 0.1, "augment": 0.9}, _augment_methods(DSSRD_MODES["cutmix"]), {}),
        "kd_cutmix_pick": ({"ce": 0.1, "augment": 0.9}, _augment_methods(pick), {}),
        "crd_kd_cutmix_pick": ({"ce": 0.1, "augment": 0.9, "crd": 0.8}, _augment_methods(pick), {}),
        "trans": ({"ce": 1.0, "kd": 1.0, "trans_ce": 1.0, "trans_kd": 1.0}, {}, {"student": "resnet8x4_trans"}),
    }
    written = []
    for row, (loss, methods, extra) in rows.items():
        data = {"name": f"{dataset}-dssrd-{row}", "seed": 0, "epochs": spec["epochs"]}
        if "regime" in extra:
            data["regime"] = extra["regime"]
        data["dataset"] = dict(spec["dataset"])
        if row == "dssrd":
            data["dataset"]["views"] = dict(TWO_VIEWS)
        data.update({"student": {"arch": extra.get("student", spec["student"])},
                     "teacher": {"checkpoint": spec["teacher"]}, "loss": loss})
        if methods:
            data["methods"] = methods
        data.update({"optim": {"lr": spec["lr"], "momentum": 0.9, "weight_decay": 5.0e-4},
                     "schedule": dict(spec["schedule"])})
        path = root / dataset / "dssrd" / f"{row}.yaml"
        _dump(path, DSSRD_HEADER.format(what=f"{row}; {spec['note']}",
                                        command=f"kdzoo distill -c configs/{dataset}/dssrd/{row}.yaml"), data)
        written.append(path)
    return written


def _student_rows():
    from kdzoo.bench.anchors import CIFAR100

    out = [(k, v) for k, v in CIFAR100.items() if k[0] == "student"]
    out += [(("student", "resnet32x4", s), v) for (row, s), v in SIMKD.items() if row == "student"]
    return out


if __name__ == "__main__":
    paths = write_all()
    print(f"wrote {len(paths)} recipes")

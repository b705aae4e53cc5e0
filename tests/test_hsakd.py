"""HSAKD: `_aux` models (layout and parameter counts), the rotate4 batch, the aux_ce and hsakd terms against hand
computations, gradient routing, both teacher options, the mutual regime, few-shot fractions, and the CLI path."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from kdzoo.config import load_config
from kdzoo.core.batch import Batch, StepInfo
from kdzoo.core.dist import DistInfo
from kdzoo.data.batch_transforms import rotate4
from kdzoo.distillers import METHODS
from kdzoo.distillers.hsakd import paired_heads
from kdzoo.engine.trainer import make_engine
from kdzoo.models import create_model, list_models
from kdzoo.models.aux import AUX_ARCHS, class_logits
from kdzoo.models.features import FeatureModel, Features, Needs
from kdzoo.program import BuildContext
from kdzoo.regimes.mutual import Mutual, peer_terms
from tests.conftest import CONFIGS, FAST, run_cli
from tests.method_harness import (
    assert_gradient_routing,
    build_regime,
    random_batch,
    teacher_file,
)

CPU = torch.device("cpu")
INFO = StepInfo(epoch=0, epochs=1, step=0, steps_per_epoch=1)
H = CONFIGS / "digits" / "hsakd"
SMALL = [*FAST, "engine.precision=fp32", "dataset.subset=200", "dataset.batch_size=50", "seed=0"]


# Parameter counts from the layer sizes ---------------------------------------------------------------------------
def bn(c):
    return 2 * c


def res_block(i, o, stride):
    short = i * o + bn(o) if stride != 1 or i != o else 0
    return 9 * i * o + bn(o) + 9 * o * o + bn(o) + short


def res_stage(i, o, n, stride):
    return res_block(i, o, stride) + (n - 1) * res_block(o, o, 1)


def wrn_block(i, o):
    return bn(i) + 9 * i * o + bn(o) + 9 * o * o + (i * o if i != o else 0)


def wrn_stage(i, o, n):
    return wrn_block(i, o) + (n - 1) * wrn_block(o, o)


VGG_WIDTHS = {"vgg8": [[64], [128], [256], [512], [512]],
              "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
              "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
              "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
              "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4]}


def vgg_block(widths, i):
    total = 0
    for o in widths:
        total += 9 * i * o + o + bn(o)  # conv with bias, BN
        i = o
    return total


def inverted_residual(i, o, t):
    h = i * t
    return i * h + bn(h) + 9 * h + bn(h) + h * o + bn(o)


def mnv2_group(i, o, t, n):
    return inverted_residual(i, o, t) + (n - 1) * inverted_residual(o, o, t)


# MobileNetV2 at width 0.5 (CIFAR): (expansion, out channels, repeats) per block group
MNV2 = [(1, 8, 1), (6, 12, 2), (6, 16, 3), (6, 32, 4), (6, 48, 3), (6, 80, 3), (6, 160, 1)]


def v2_block(i, p, stride, bottleneck):
    if bottleneck:  # 1x1, 3x3, 1x1 to 4p
        body, o = i * p + bn(p) + 9 * p * p + bn(p) + 4 * p * p + bn(4 * p), 4 * p
    else:
        body, o = 9 * i * p + bn(p) + 9 * p * p + bn(p), p
    return body + (i * o + bn(o) if stride != 1 or i != o else 0)


def v2_stage(i, p, n, stride, bottleneck):
    e = 4 if bottleneck else 1
    return v2_block(i, p, stride, bottleneck) + (n - 1) * v2_block(p * e, p, 1, bottleneck)


def v1_block(i, o, groups):
    mid, g1 = o // 4, 1 if i == 24 else groups
    return i * mid // g1 + bn(mid) + 9 * mid + bn(mid) + mid * o // groups + bn(o)


def v1_stage(i, o, n, downsample=True, groups=3):
    first = v1_block(i, o - i, groups) if downsample else v1_block(i, o, groups)
    return first + (n - 1) * v1_block(o, o, groups)


def sv2_basic(c):
    h = c // 2
    return h * h + bn(h) + 9 * h + bn(h) + h * h + bn(h)


def sv2_down(i, o):
    m = o // 2
    return 9 * i + bn(i) + i * m + bn(m) + i * m + bn(m) + 9 * m + bn(m) + m * m + bn(m)


def sv2_stage(i, o, n):
    return sv2_down(i, o) + n * sv2_basic(o)


SV2 = {"ShuffleV2": (116, 232, 464), "ShuffleV2_1_5": (176, 352, 704)}  # then a 1x1 conv to 1024; 3/7/3 blocks

V2_LAYERS = {"ResNet18": ([2, 2, 2, 2], False), "ResNet34": ([3, 4, 6, 3], False), "ResNet50": ([3, 4, 6, 3], True)}


def counts(arch: str, classes: int = 100) -> tuple[int, int]:
    """(backbone, heads) parameter counts of `<arch>_aux` for 3-channel input."""
    fc = lambda c, k: c * k + k  # noqa: E731
    if arch == "ShuffleV1":  # 240/480/960 channels, 4/8/4 blocks, 3 groups, 24-channel 1x1 stem
        backbone = 3 * 24 + bn(24) + v1_stage(24, 240, 4) + v1_stage(240, 480, 8) + v1_stage(480, 960, 4)
        heads = v1_stage(240, 480, 8) + 2 * v1_stage(480, 960, 4) + v1_stage(960, 960, 4, downsample=False)
        return backbone + fc(960, classes), heads + 3 * fc(960, 4 * classes)
    if arch in SV2:
        c1, c2, c3 = SV2[arch]
        last = c3 * 1024 + bn(1024)
        backbone = 3 * 24 + bn(24) + sv2_stage(24, c1, 3) + sv2_stage(c1, c2, 7) + sv2_stage(c2, c3, 3) + last
        heads = sv2_stage(c1, c2, 7) + 2 * sv2_stage(c2, c3, 3) + sv2_stage(c3, c3, 3) + 3 * last
        return backbone + fc(1024, classes), heads + 3 * fc(1024, 4 * classes)
    if arch in V2_LAYERS:
        n, bottleneck = V2_LAYERS[arch]
        e = 4 if bottleneck else 1
        st = lambda i, p, k, s: v2_stage(i, p, n[k], s, bottleneck)  # noqa: E731
        backbone = 27 * 64 + bn(64) + st(64, 64, 0, 1) + st(64 * e, 128, 1, 2) + st(128 * e, 256, 2, 2) \
            + st(256 * e, 512, 3, 2) + fc(512 * e, classes)
        heads = (st(64 * e, 128, 1, 2) + st(128 * e, 256, 2, 2) + st(256 * e, 512, 3, 2)
                 + st(128 * e, 256, 2, 2) + st(256 * e, 512, 3, 2) + st(256 * e, 512, 3, 2) + st(512 * e, 512, 3, 1))
        return backbone, heads + 4 * fc(512 * e, 4 * classes)
    if arch in ("MobileNetV2", "MobileNetV2_hsakd"):  # the two layouts differ in strides only
        outs = [o for _, o, _ in MNV2]
        group = lambda g, i: mnv2_group(i, MNV2[g][1], MNV2[g][0], MNV2[g][2])  # noqa: E731
        last = 160 * 1280 + bn(1280)  # the 1x1 conv to 1280 channels
        backbone = 27 * 16 + bn(16) + sum(group(g, ([16] + outs)[g]) for g in range(7)) + last + fc(1280, classes)
        heads = (sum(group(g, outs[g - 1]) for g in range(2, 7)) + sum(group(g, outs[g - 1]) for g in range(3, 7))
                 + group(5, outs[4]) + group(6, outs[5]) + group(5, outs[6]) + group(6, outs[5]) + 4 * last)
        return backbone, heads + 4 * fc(1280, 4 * classes)
    if arch.startswith("vgg"):
        w = VGG_WIDTHS[arch]
        c = [3] + [b[-1] for b in w]  # input channels of block i: c[i]
        backbone = sum(vgg_block(w[i], c[i]) for i in range(5)) + fc(512, classes)
        later = lambda first: sum(vgg_block(w[i], c[i]) for i in range(first, 5))  # noqa: E731
        heads = later(1) + later(2) + later(3) + vgg_block(w[3], c[5]) + vgg_block(w[4], w[3][-1])
        return backbone, heads + 4 * fc(512, 4 * classes)
    if arch.startswith("resnet"):
        depth, wide = arch[len("resnet"):].split("x") if "x" in arch else (arch[len("resnet"):], None)
        c0, c1, c2, c3 = (32, 64, 128, 256) if wide else (16, 16, 32, 64)
        n = (int(depth) - 2) // 6
        backbone = 27 * c0 + bn(c0) + res_stage(c0, c1, n, 1) + res_stage(c1, c2, n, 2) + res_stage(c2, c3, n, 2)
        heads = res_stage(c1, c2, n, 2) + 2 * res_stage(c2, c3, n, 2) + res_stage(c3, c3, n, 1)
        return backbone + fc(c3, classes), heads + 3 * fc(c3, 4 * classes)
    depth, widen = (int(v) for v in arch[len("wrn_"):].split("_"))
    n = (depth - 4) // 6
    c1, c2, c3 = 16 * widen, 32 * widen, 64 * widen
    backbone = 27 * 16 + wrn_stage(16, c1, n) + wrn_stage(c1, c2, n) + wrn_stage(c2, c3, n) + bn(c3)
    heads = wrn_stage(c1, c2, n) + 2 * wrn_stage(c2, c3, n) + wrn_stage(c3, c3, n) + 3 * bn(c3)
    return backbone + fc(c3, classes), heads + 3 * fc(c3, 4 * classes)


# Totals HSAKD's own models give (winycg/HSAKD models/, 100 classes), computed once beside ours.
HSAKD_TOTALS = {"resnet8x4": 4790836, "resnet32x4": 26340916, "resnet56": 3067684, "resnet20": 1041316,
                "wrn_40_2": 8024484, "wrn_16_2": 2631588, "wrn_40_1": 2054212, "vgg13": 46511844, "vgg8": 20799012,
                "MobileNetV2": 5484332, "MobileNetV2_hsakd": 5484332, "ResNet50": 100681956,
                "ShuffleV1": 4067998, "ShuffleV2": 5875516}


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch", AUX_ARCHS)
def test_aux_models_match_the_layer_sizes_and_keep_the_plain_backbone(arch):
    torch.manual_seed(0)
    model = create_model(f"{arch}_aux", num_classes=100)
    backbone, heads = counts(arch)
    assert n_params(model.backbone) == backbone == n_params(create_model(arch, num_classes=100))
    assert n_params(model) == backbone + heads
    if arch in HSAKD_TOTALS:
        assert n_params(model) == HSAKD_TOTALS[arch]
    assert set(model.backbone.state_dict()) == set(create_model(arch, num_classes=100).state_dict())
    x = torch.randn(2, 3, 32, 32)
    logits, joint = model.eval().forward_with_heads(x)
    heads = 4 if arch.startswith(("vgg", "Mobile", "ResNet")) else 3
    assert logits.shape == (2, 100) and [h.shape for h in joint] == [(2, 400)] * heads
    assert torch.equal(model(x), logits)  # forward is the backbone's
    assert f"{arch}_aux" in list_models()


@pytest.mark.parametrize("arch, sides", [("MobileNetV2", [16, 16, 8, 4, 2]), ("MobileNetV2_hsakd", [32, 32, 16, 8, 4])])
def test_the_two_mobilenetv2_layouts_run_their_stages_at_their_resolutions(arch, sides):
    """RepDistiller's mobile_half has a stride-2 stem, HSAKD's mobilenetV2 a stride-1 one: equal parameters,
    stages (stem, block groups 1, 2, 4, 6: 16, 12, 16, 48, 160 channels) at different resolutions."""
    model = create_model(arch, num_classes=100)
    feats = FeatureModel(model, Needs(stages=True))(torch.randn(1, 3, 32, 32)).stages
    assert [tuple(f.shape[1:]) for f in feats] == [(c, s, s) for c, s in zip([16, 12, 16, 48, 160], sides)]


def test_hsakd_recipes_train_hsakds_mobilenetv2_and_repdistillers_keep_mobile_half():
    hsakd = [*(CONFIGS / "cifar100" / "hsakd").glob("*MobileNetV2*.yaml"),
             CONFIGS / "cifar100" / "mutual" / "hsakd-MobileNetV2.yaml"]
    assert len(hsakd) == 5
    for path in hsakd:
        assert "MobileNetV2_hsakd_aux" in path.read_text() and "arch: MobileNetV2_aux" not in path.read_text()
    for path in (CONFIGS / "cifar100" / "kd").glob("*MobileNetV2.yaml"):
        assert "student: {arch: MobileNetV2}" in path.read_text()


def test_class_logits_sum_the_rotations_of_each_class():
    joint = torch.arange(8.0).view(1, 8)  # 2 classes x 4 rotations, joint label 4 * class + rotation
    assert class_logits(joint).tolist() == [[0 + 1 + 2 + 3, 4 + 5 + 6 + 7]]


def test_a_plain_checkpoint_loads_into_an_aux_backbone(tmp_path):
    plain = teacher_file(tmp_path, "resnet8", num_classes=10, in_channels=1)
    run = tmp_path / "opt1"
    assert run_cli("train", "-c", H / "teacher_opt1.yaml", "--out", run, *SMALL, "epochs=1", "model.arch=resnet8_aux",
                   f"model.checkpoint={plain}") == 0
    before, after = load_file(str(plain)), load_file(str(run / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(before[k], after[f"backbone.{k}"]) for k in before)  # option 1: frozen, bit-identical
    assert any(k.startswith("branches.") for k in after)
    joint = tmp_path / "joint"  # the same start without the freeze: backbone and heads train together (option 2)
    assert run_cli("train", "-c", H / "teacher_opt1.yaml", "--out", joint, *SMALL, "epochs=1", "model.arch=resnet8_aux",
                   f"model.checkpoint={plain}", "model.freeze=[]") == 0
    trained = load_file(str(joint / "checkpoints" / "last.safetensors"))
    moved = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, trained[f"backbone.{k}"])]
    assert "conv1.weight" in moved and "fc.weight" in moved


# The rotated batch -----------------------------------------------------------------------------------------------
def test_rotate4_interleaves_rotations_with_joint_labels():
    x = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).view(2, 1, 2, 2)  # image 0: [[0, 1], [2, 3]]
    out = rotate4(Batch(inputs=x, targets=torch.tensor([3, 1]), index=torch.tensor([7, 9])))
    assert out.inputs.shape == (8, 1, 2, 2)
    assert out.inputs[0, 0].tolist() == [[0, 1], [2, 3]]
    assert out.inputs[1, 0].tolist() == [[1, 3], [0, 2]]  # rot90 k=1 over (H, W): counter-clockwise
    assert out.inputs[2, 0].tolist() == [[3, 2], [1, 0]]
    assert out.inputs[3, 0].tolist() == [[2, 0], [3, 1]]
    assert out.inputs[4, 0].tolist() == [[4, 5], [6, 7]]  # image 1 starts at row 4
    assert out.targets.tolist() == [3, 3, 3, 3, 1, 1, 1, 1]
    assert out.aux_targets.tolist() == [12, 13, 14, 15, 4, 5, 6, 7]
    assert out.original.tolist() == [0, 4]  # the unrotated rows
    assert out.index.tolist() == [7, 7, 7, 7, 9, 9, 9, 9]


# Loss terms against hand computations ---------------------------------------------------------------------------
def kl_by_hand(s, t, T):
    """sum_rows sum_classes p_t (log p_t - log p_s) / rows * T^2, written out."""
    p_t, log_p_s = torch.softmax(t / T, 1), torch.log_softmax(s / T, 1)
    return (p_t * (torch.log(p_t) - log_p_s)).sum() / s.shape[0] * T * T


def test_hsakd_terms_by_hand():
    g = torch.Generator().manual_seed(0)
    rows, classes = 8, 3  # 2 images x 4 rotations
    z_s, z_t = torch.randn(rows, classes, generator=g), torch.randn(rows, classes, generator=g)
    hs = [torch.randn(rows, 4 * classes, generator=g) for _ in range(3)]
    ht = [torch.randn(rows, 4 * classes, generator=g) for _ in range(3)]
    method = METHODS.get("hsakd")
    assert method.Params().T == 3.0 and method.recipes.loss == {"ce": 1.0, "hsakd": 1.0, "hsakd_logits": 1.0}
    m = method.__new__(method)
    torch.nn.Module.__init__(m)
    m.params = method.Params()
    got = m.losses(None, Features(logits=z_s, heads=hs), Features(logits=z_t, heads=ht), INFO)
    assert got["hsakd_logits"].item() == pytest.approx(kl_by_hand(z_s, z_t, 3.0).item(), rel=1e-5)
    assert got["hsakd"].item() == pytest.approx(sum(kl_by_hand(a, b, 3.0) for a, b in zip(hs, ht)).item(), rel=1e-5)


def test_aux_ce_by_hand():
    g = torch.Generator().manual_seed(1)
    heads = [torch.randn(8, 12, generator=g) for _ in range(3)]
    joint = torch.randint(0, 12, (8,), generator=g)
    m = METHODS.get("aux_ce").__new__(METHODS.get("aux_ce"))
    got = METHODS.get("aux_ce").losses(m, Batch(inputs=None, targets=joint // 4, aux_targets=joint),
                                       Features(heads=heads), None, INFO)["aux_ce"]
    by_hand = sum(-(torch.log_softmax(h, 1)[torch.arange(8), joint]).mean() for h in heads)
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_head_counts_pair_from_the_deepest():
    assert paired_heads(["s1", "s2", "s3"], ["t1", "t2", "t3", "t4"]) == [("s1", "t2"), ("s2", "t3"), ("s3", "t4")]
    assert paired_heads(["s1", "s2"], ["t1", "t2", "t3"]) == [("s1", "t2"), ("s2", "t3")]


@pytest.fixture(scope="module")
def hsakd_regime(tmp_path_factory):
    return build_regime(tmp_path_factory.mktemp("hsakd"), "resnet8_aux", "resnet8x4_aux",
                        {"ce": 1.0, "hsakd": 1.0, "hsakd_logits": 1.0}, batch_size=4, n_train=40)


@pytest.mark.parametrize("term", ["ce", "hsakd", "hsakd_logits"])
def test_each_term_trains_the_student_backbone_or_heads_and_never_the_teacher(hsakd_regime, term):
    regime = hsakd_regime
    batch = random_batch(regime, batch_size=4)  # the train stream's rotate4 applied
    assert batch.size == 16 and batch.original.tolist() == [0, 4, 8, 12]
    phase = regime.phases()[-1]
    regime.train(True)
    for p in phase.params:
        p.grad = None
    terms = phase.step(batch, INFO)
    assert set(terms) == {"ce", "hsakd", "hsakd_logits"}
    terms[term].backward()
    student = regime.student
    assert all(p.grad is None for p in regime.teacher.parameters())

    def reached(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert reached(student.backbone.layer1)  # every term reaches the backbone (heads take its features with grads)
    assert reached(student.branches) == (term == "hsakd")  # only the head term trains the heads
    assert reached(student.backbone.fc) == (term != "hsakd")


def test_hsakd_gradient_routing_for_the_whole_recipe(hsakd_regime):
    assert_gradient_routing(hsakd_regime, random_batch(hsakd_regime))


def test_hsakd_with_a_plain_teacher_is_a_one_line_error(tmp_path):
    plain = teacher_file(tmp_path, "resnet8x4", num_classes=10, in_channels=1)
    code = run_cli("distill", "-c", H / "student.yaml", "--out", tmp_path / "s", *SMALL,
                   f"teacher.checkpoint={plain}")
    assert code == 2


def test_freezing_without_a_checkpoint_is_refused(tmp_path, capsys):
    code = run_cli("train", "-c", H / "teacher_opt1.yaml", "--out", tmp_path / "r", *SMALL, "model.checkpoint=null")
    assert code == 2 and "student.checkpoint" in capsys.readouterr().err


# End to end through the CLI --------------------------------------------------------------------------------------
def test_aux_teacher_then_hsakd_student_then_eval(tmp_path, capsys):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert run_cli("train", "-c", H / "teacher.yaml", "--out", teacher, *SMALL, "epochs=2") == 0
    records = [json.loads(line) for line in (teacher / "metrics.jsonl").read_text().splitlines()]
    record = records[-1]
    assert {"train_ce", "train_aux_ce", "test_top1", "test_head1_top1", "test_head3_top1"} <= set(record)
    # HSAKD keeps the teacher epoch of its best head (train_teacher_cifar.py's test() returns the heads' best)
    summary = json.loads((teacher / "summary.json").read_text())
    best = max(records, key=lambda r: (r["test_heads_top1"], -r["epoch"]))
    assert summary["selected_by"] == "test_heads_top1" and summary["best_epoch"] == best["epoch"]
    assert record["test_heads_top1"] == max(record[f"test_head{i}_top1"] for i in (1, 2, 3))
    assert summary["result"]["value"] == best["test_top1"]
    assert run_cli("distill", "-c", H / "student.yaml", "--out", student, *SMALL, "epochs=2",
                   f"teacher.checkpoint={teacher}") == 0
    record = json.loads((student / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_hsakd"] > 0 and record["train_hsakd_logits"] > 0 and record["train_ce"] > 0
    capsys.readouterr()
    assert run_cli("eval", "--checkpoint", student, "--which", "last", "--json", "--heads") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["arch"] == "resnet8_aux" and result["top1"] == pytest.approx(record["test_top1"])
    assert result["head1_top1"] == pytest.approx(record["test_head1_top1"])
    assert run_cli("eval", "--checkpoint", teacher / "checkpoints" / "last.safetensors") == 0
    plain = tmp_path / "plain"
    assert run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", plain, *SMALL, "epochs=1") == 0
    assert run_cli("eval", "--checkpoint", plain, "--heads") == 2


# Mutual regime ---------------------------------------------------------------------------------------------------
def test_peer_terms_expand_own_and_mutual_terms():
    loss, sections = peer_terms({"ce": 1.0, "kd": 0.5}, {"kd": {"T": 1.0}}, 3)
    assert loss == {"peer0.ce": 1.0, "peer1.ce": 1.0, "peer2.ce": 1.0, "peer0.from1.kd": 0.5, "peer0.from2.kd": 0.5,
                    "peer1.from0.kd": 0.5, "peer1.from2.kd": 0.5, "peer2.from0.kd": 0.5, "peer2.from1.kd": 0.5}
    assert sections["peer2.from0.kd"] == {"T": 1.0, "student": "peer2", "teacher": "peer0", "detach_teacher": True}


@pytest.mark.parametrize("override, says", [("peers=[{arch: resnet8}]", "2 or more peers"),
                                             ("student.arch=wrn_16_1", "trains its peers"),
                                             ("teacher.checkpoint=runs/x", "and no teacher")])
def test_mutual_refuses_one_peer_and_a_student_or_teacher(tmp_path, capsys, override, says):
    assert run_cli("train", "-c", CONFIGS / "digits" / "mutual" / "dml.yaml", "--out", tmp_path / "r", *SMALL,
                   override) == 2
    assert says in capsys.readouterr().err


def test_rotations_with_named_views_and_non_square_heads_are_refused(tmp_path, capsys):
    assert run_cli("train", "-c", H / "teacher.yaml", "--out", tmp_path / "r", *SMALL,
                   "dataset.views={x: train, plain: plain}") == 2
    assert "several views" in capsys.readouterr().err
    from kdzoo.errors import KdzooError
    from kdzoo.models.aux import RotatedHeads

    with pytest.raises(KdzooError, match="square image"):
        RotatedHeads(create_model("resnet8_aux", 10, 1))(torch.zeros(2, 1, 8, 6))


def test_each_peer_learns_from_the_other_only_through_its_own_term():
    cfg = load_config(CONFIGS / "digits" / "mutual" / "hsakd.yaml", SMALL)
    program = Mutual.build(BuildContext(cfg=cfg, device=CPU, dist=DistInfo()))
    stream = program.data["train"]
    batch = stream.batch(next(iter(stream.loader(DistInfo()))))
    terms = program.phases[0].step(batch, INFO)
    peer0, peer1 = program.models["peer0"].module, program.models["peer1"].module
    from kdzoo.program.evaluators import OneLoader

    test = program.data["test"]
    metrics = {}
    for evaluator in program.phases[0].evaluators:
        metrics.update(evaluator(OneLoader(test.loader(DistInfo()), CPU)))
    assert {"test_top1", "test_peer0_top1", "test_peer1_head3_top1", "test_peer0_head1_top1"} <= set(metrics)
    for term, trained, untouched in (("peer0.from1.hsakd", peer0, peer1), ("peer1.from0.hsakd_logits", peer1, peer0)):
        for p in [*peer0.parameters(), *peer1.parameters()]:
            p.grad = None
        terms[term].backward(retain_graph=True)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())
        assert all(p.grad is None for p in untouched.parameters())


def test_mutual_dml_trains_both_peers_saves_each_and_resumes_exactly(tmp_path):
    from tests.test_engine import _stop_after_epochs

    recipe = CONFIGS / "digits" / "mutual" / "dml.yaml"
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli("train", "-c", recipe, "--out", full, *SMALL, "epochs=3") == 0
    record = json.loads((full / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_peer0.from1.kd"] > 0 and record["train_peer1.from0.kd"] > 0
    best = int(record["test_best_peer"])
    assert record["test_top1"] == max(record["test_peer0_top1"], record["test_peer1_top1"])
    folder = full / "checkpoints"
    peers = [load_file(str(folder / f"peer{i}.last.safetensors")) for i in range(2)]
    assert any(not torch.equal(peers[0][k], peers[1][k]) for k in peers[0])  # two peers, trained apart
    deployed = load_file(str(folder / "last.safetensors"))
    assert all(torch.equal(deployed[k], peers[best][k]) for k in deployed)
    engine = make_engine(load_config(recipe, [*SMALL, "epochs=3"]), part, quiet=True)
    _stop_after_epochs(engine, 1)
    assert run_cli("train", "--resume", part, *FAST) == 0
    for i in range(2):
        a = load_file(str(part / "checkpoints" / f"peer{i}.last.safetensors"))
        assert all(torch.equal(a[k], peers[i][k]) for k in a)


# Few-shot --------------------------------------------------------------------------------------------------------
def test_fraction_is_a_stratified_seeded_share_of_the_training_set(tmp_path):
    made = []

    def train_set(fraction, seed=0):
        cfg = load_config(CONFIGS / "digits" / "student.yaml", [*FAST, f"dataset.fraction={fraction}",
                                                                   f"dataset.subset_seed={seed}"])
        made.append(1)
        engine = make_engine(cfg, tmp_path / f"run{len(made)}", quiet=True)
        dataset = engine.program.data["train"].dataset
        engine.close()
        return dataset

    quarter, half = train_set(0.25), train_set(0.5)
    full = len(quarter.dataset)
    assert abs(len(quarter) - round(0.25 * full)) <= 1 and abs(len(half) - round(0.5 * full)) <= 1
    counts = torch.bincount(quarter.targets, minlength=10).float()
    assert counts.max() - counts.min() <= 0.05 * counts.mean() + 2  # stratified
    assert torch.equal(train_set(0.25).indices, quarter.indices)  # seeded
    assert not torch.equal(train_set(0.25, seed=1).indices, quarter.indices)
    assert run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", tmp_path / "bad",
                   "dataset.fraction=1.5") == 2


@pytest.mark.parametrize("arch, total, depths, bottleneck", [("tv:resnet18", 59244968, [2, 2, 2, 2], False),
                                                            ("tv:resnet34", 98271912, [3, 4, 6, 3], False),
                                                            ("tv:resnet50", 132039336, [3, 4, 6, 3], True)])
def test_torchvision_resnet_aux_models_for_the_imagenet_pair(arch, total, depths, bottleneck):
    model = create_model(f"{arch}_aux", num_classes=1000)
    assert n_params(model.backbone) == n_params(create_model(arch, num_classes=1000))
    e = 4 if bottleneck else 1
    st = lambda i, p, k, s: v2_stage(i, p, depths[k], s, bottleneck)  # noqa: E731
    heads = (st(64 * e, 128, 1, 2) + st(128 * e, 256, 2, 2) + st(256 * e, 512, 3, 2) + st(128 * e, 256, 2, 2)
             + st(256 * e, 512, 3, 2) + st(256 * e, 512, 3, 2) + st(512 * e, 512, 3, 1) + 4 * (512 * e * 4000 + 4000))
    assert n_params(model) == n_params(model.backbone) + heads == total  # total: HSAKD's resnet*_imagenet_aux
    assert model.plain_arch == arch and model.num_heads == 4


def test_mutual_hsakd_under_torchrun_two_processes(tmp_path):
    """The peers' Bundle under DDP (gloo): both peers train and are saved."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CONFIGS.parent / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29562",
           "-m", "kdzoo.cli", "train", "-c", str(CONFIGS / "digits" / "mutual" / "hsakd.yaml"), "--out", str(out),
           "epochs=1", "dataset.subset=400", *FAST]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "env.json").read_text())["world_size"] == 2
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_peer0.from1.hsakd"] > 0 and "test_peer1_head1_top1" in record
    assert all((out / "checkpoints" / f"peer{i}.last.safetensors").is_file() for i in range(2))

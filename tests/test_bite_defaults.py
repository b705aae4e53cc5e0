"""Published defaults of every method: Params dataclasses, recipe loss weights and adapter structure.

Values from /work/shared/methods.md and the originals the method modules cite (HobbitLong/RepDistiller,
megvii-research/mdistiller, DefangChen/SimKD, giakoumoglou/distillers, hunto/DIST_KD).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from kdzoo.distillers import METHODS
from tests.method_harness import probed_pair, setup_context

PARAMS = {
    "ce": {"label_smoothing": 0.0},
    "ttm": {"l": 0.1},  # zkxufo/TTM README: --ttm_l 0.1 (TTM), 0.2 (WTTM)
    "wttm": {"l": 0.2},
    "nkd": {"T": 1.0, "gamma": 1.5},  # yzd-v/cls_KD ImageNet config: temp 1.0, gamma 1.5
    "dot": {"delta": 0.075},  # mdistiller configs/cifar100/dot: DOT.DELTA 0.075
    # yzd-v/cls_KD USKDLoss defaults (its ImageNet configs); the CIFAR-100 row sets 0.1/0.1/0.1
    "uskd": {"alpha": 1.0, "beta": 0.1, "mu": 0.005, "stage": -2, "rank_log_probs": True},
    # zhengli97/CTKD: T = 1 + 20 sigmoid(.), lambda 0 -> -1 over 10 epochs (cosine), global temperature
    "ctkd": {"temperature": "global", "t_start": 1.0, "t_end": 20.0, "decay_max": 0.0, "decay_min": -1.0,
             "decay_loops": 10.0, "instance_hidden": 128, "base": "kd", "dkd_alpha": 1.0, "dkd_beta": 2.0,
             "standardize": False},
    "ofd": {"connector_kernel": 1},  # mdistiller configs/cifar100/ofd.yaml: CONNECTOR.KERNEL_SIZE 1
    "nd": {"centers": "class_mean", "refresh": False},  # KD++: the teacher's class-mean embeddings
    "catkd": {"resolution": 2, "normalize": False, "binarize": False, "student_bias": False},  # res32x4 config
    "ickd": {"kernel_size": 3, "batch_power": 2, "stage": -1},  # torchdistill ICKD: 3x3 embed, / (C B^2)
    "srd": {"exponent": 4.0, "T": 1.0},  # torchdistill SRDLoss official ImageNet config
    "dist_plus": {"beta": 2.0, "gamma": 2.0, "iota": 1.0, "kappa": 1.0, "tau": 1.0, "channel_term": "corr"},
    # Jin-Ying/Multi-Level-Logit-Distillation: T 4 plus 3, 5, 2, 6; the strong view; the masks as the code
    "mlkd": {"T": 4.0, "more_temperatures": [3.0, 5.0, 2.0, 6.0], "strong_view": "strong", "masks": True,
             "strong_tail_on_weak": True, "standardize": False},
    "kd": {"T": 4.0, "standardize": False},  # LS (logit standardization) off unless a recipe asks
    "dkd": {"alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20.0, "standardize": False},
    "dist": {"beta": 1.0, "gamma": 1.0, "tau": 4.0},
    "fitnet": {"hint_layer": 2},
    "at": {"p": 2.0},
    "sp": {},
    "cc": {"feat_dim": 128},
    "vid": {"init_pred_var": 5.0, "eps": 1e-5},
    "rkd": {"w_d": 25.0, "w_a": 50.0},
    "pkt": {"eps": 1e-7},
    "ab": {"margin": 1.0, "init_epochs": 30},
    "ft": {"k": 0.5, "p1": 2.0, "p2": 1.0, "use_bn": False, "init_epochs": 30, "init_lr": None},
    "fsp": {"init_epochs": 30},
    "nst": {},
    "crd": {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5, "negatives": "class"},
    "reviewkd": {"warmup_epochs": 20.0, "max_mid_channel": 512},
    "srrl": {},
    "semckd": {"soft": 1.0, "factor": 4},
    "simkd": {"factor": 2},
    "rrd": {"feat_dim": 128, "nce_k": 16384, "nce_t_s": 0.04, "nce_t_t": 0.10},
    "dcd": {"feat_dim": 128, "init_tau": 1.0, "init_b": 0.0, "max_tau": 10.0, "alpha": 0.5},
    "aux_ce": {},
    "hsakd": {"T": 3.0},  # HSAKD: KD_3 = 9 * KL at T 3
    # CKD (alextxu/ckd): pos_and_neg 2, max_rel_samples 100,000, kd_T 4
    "ckd": {"pos_and_neg": 2, "T": 4.0, "groups": 100_000},
    "ckd_add": {"pos_and_neg": 2, "T": 4.0, "groups": 100_000},
    "ckd_mixup": {"pos_and_neg": 2, "T": 4.0, "groups": 100_000},
    "ckd_inter": {"pos_and_neg": 2, "T": 4.0, "groups": 100_000, "inner": "hint"},
    "mixup": {"T": 4.0, "groups": 100_000},
    "mixup3": {"T": 4.0, "groups": 100_000},
    # DS-SRD / Good-DA-in-KD: --mix_n_run 2, --cutmix_pick_criterion student_entropy, --lw_mix [1,0,1], KD at T 4,
    # --t_output_as_target_for_input_mix; K 500/800/1000, 100 negatives, warm-up 10, phi mean 0.1, 20 iterations
    "augment": {"mode": "cutmix_pick", "n_run": 2, "criterion": "student_entropy", "weights": [1.0, 0.0, 1.0],
                "teacher_target": True, "T": 4.0},
    "proto": {"clusters": [500, 800, 1000], "negatives": 100, "warmup_epochs": 10, "embed": "auto",
              "key_network": "teacher", "key_view": "x", "phi_mean": 0.1, "iterations": 20, "redo": 5, "T": 4.0,
              "halve_rows_over": 0.0, "key_grad": False, "original_negatives": False},  # DS-SRD's code: 1.5, true, true
    "mixup_ce": {},
    "trans_kd": {"T": 4.0},
    "byol": {"imix": True, "symmetric": False, "target_view": "x2"},  # kibok90/imix: i-Mix on, not symmetrised
}

RECIPES = {
    "ce": {},
    "kd": {"ce": 0.1, "kd": 0.9},
    "dkd": {"ce": 1.0, "dkd": 1.0},
    "dist": {"ce": 1.0, "dist": 2.0},  # hunto/DIST_KD CIFAR config (see dist.py)
    "ttm": {"ce": 1.0, "ttm": 45.0},  # zkxufo/TTM README: -r 1 -b 45
    "wttm": {"ce": 1.0, "wttm": 4.0},  # its WTTM weight (-a 4, with CRD)
    "nkd": {"ce": 1.0, "nkd": 1.0},  # yzd-v/cls_KD: classifier loss + NKD
    "dot": {"ce": 0.1, "kd": 0.9},  # mdistiller's KD + DOT: KD's weights, DOT changes the step
    "uskd": {"ce": 1.0, "uskd": 1.0},  # the classifier loss + USKD (alpha, beta, mu inside)
    "ctkd": {"ce": 0.1, "ctkd": 0.9},  # CTKD run_cifar_distill.sh: -r 0.1 -a 0.9
    "ofd": {"ce": 1.0, "ofd": 0.001},  # mdistiller OFD: CE 1, FEAT 0.001
    "nd": {"ce": 1.0, "kd": 3.5, "nd": 2.0},  # KD++ resnet32x4 -> resnet8x4
    "catkd": {"ce": 1.0, "catkd": 15.0},  # CAT-KD res32x4 -> res8x4: CAT_loss_weight 15
    "ickd": {"ce": 1.0, "ickd": 2.5},  # ICKD CIFAR: -r 1 -a 0 -b 2.5
    "srd": {"ce": 1.0, "srd": 1.0},  # torchdistill SRD: CE 1 + SRD 1
    "dist_plus": {"ce": 1.0, "dist_plus": 2.0},  # torchdistill DIST+: CE 1 + DIST+ 2
    "mlkd": {"ce": 0.1, "mlkd_strong_ce": 0.1, "mlkd_instance": 0.9, "mlkd_batch": 0.9, "mlkd_class": 0.9},
    "fitnet": {"ce": 1.0, "fitnet": 100.0},
    "at": {"ce": 1.0, "at": 1000.0},
    "sp": {"ce": 1.0, "sp": 3000.0},
    "cc": {"ce": 1.0, "cc": 0.02},
    "vid": {"ce": 1.0, "vid": 1.0},
    "rkd": {"ce": 1.0, "rkd": 1.0},
    "pkt": {"ce": 1.0, "pkt": 30000.0},
    "ab": {"ce": 1.0, "ab": 1.0},
    "ft": {"ce": 1.0, "ft": 200.0},
    "fsp": {"ce": 1.0, "fsp": 50.0},
    "nst": {"ce": 1.0, "nst": 50.0},
    "crd": {"ce": 1.0, "crd": 0.8},
    "reviewkd": {"ce": 1.0, "reviewkd": 1.0},
    "srrl": {"ce": 1.0, "kd": 1.0, "srrl": 1.0},
    "semckd": {"ce": 1.0, "kd": 1.0, "semckd": 400.0},
    "simkd": {"simkd": 1.0},
    "rrd": {"ce": 1.0, "rrd": 1.0},
    "dcd": {"ce": 1.0, "dcd": 1.0},
    "aux_ce": {"ce": 1.0, "aux_ce": 1.0},  # HSAKD's teacher: every weight 1
    "hsakd": {"ce": 1.0, "hsakd": 1.0, "hsakd_logits": 1.0},
    # CKD: w_cls = w_rel = 1 (MSEs), no CE, w_kd 0; ckd_inter's hint weight is CKD's w_inter 100
    "ckd": {"ckd_cls": 1.0, "ckd_rel": 1.0},
    "ckd_add": {"ckd_add_cls": 1.0, "ckd_add_rel": 1.0},
    "ckd_mixup": {"ckd_mixup_cls": 1.0, "ckd_mixup_rel": 1.0},
    "ckd_inter": {"ckd_inter_cls": 1.0, "ckd_inter_rel": 1.0, "ckd_inter_feat": 100.0},
    "mixup": {"mixup_cls": 1.0, "mixup_rel": 1.0},
    "mixup3": {"mixup3_cls": 1.0, "mixup3_rel": 1.0},
    # DS-SRD: -r 0.1 -a 0.9 (augment), and its supervised total gamma/alpha/beta/beta_c 1/1/0.8/0.8
    "augment": {"ce": 0.1, "augment": 0.9},
    "proto": {"ce": 1.0, "kd": 1.0, "crd": 0.8, "proto": 0.8},
    "mixup_ce": {},
    "trans_kd": {},
    "byol": {},
}

VARIANTS = {"crd": {"crd_kd": {"ce": 1.0, "kd": 1.0, "crd": 0.8}},
            "rrd": {"rrd_kd": {"ce": 1.0, "kd": 1.0, "rrd": 1.0}},
            "dcd": {"dcd_kd": {"ce": 1.0, "kd": 1.0, "dcd": 1.0}},
            # logit standardization's README: --logit-stand --base-temp 2 --kd-weight 9
            "kd": {"kd_ls": {"ce": 0.1, "kd": 9.0}},
            "dkd": {"dkd_ls": {"ce": 1.0, "dkd": 1.0}},
            "ickd": {"ickd_kd": {"ce": 1.0, "kd": 1.0, "ickd": 2.5}},  # ICKD-C + KL: -a 1
            # logit standardization's README: --logit-stand --base-temp 2 --kd-weight 9 (CE stays 0.1)
            "mlkd": {"mlkd_ls": {"ce": 0.1, "mlkd_strong_ce": 0.1, "mlkd_instance": 9.0, "mlkd_batch": 9.0,
                                 "mlkd_class": 9.0}},
            "ctkd": {"ctkd_ls": {"ce": 0.1, "ctkd": 9.0}}}
VARIANT_PARAMS = {"kd": {"kd_ls": {"T": 2.0, "standardize": True}},
                  "dkd": {"dkd_ls": {"alpha": 9.0, "beta": 72.0, "T": 2.0, "standardize": True}},  # 1 x 9, 8 x 9
                  "uskd": {"uskd": {"alpha": 0.1, "beta": 0.1, "mu": 0.1}},  # cls_KD res18_sd_cifar.py
                  # ICKD's CIFAR code: a 1x1 embed and / (C B), the form its weight 2.5 was tuned for
                  "ickd": {"ickd": {"kernel_size": 1, "batch_power": 1}, "ickd_kd": {"kernel_size": 1, "batch_power": 1}},
                  "mlkd": {"mlkd_ls": {"T": 2.0, "standardize": True}},
                  "ctkd": {"ctkd_ls": {"t_start": 2.0, "standardize": True}}}


def test_tables_cover_every_method():
    assert set(PARAMS) == set(METHODS.names()) == set(RECIPES)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_params_defaults(name):
    params = METHODS.get(name).Params()
    got = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}
    assert got == PARAMS[name]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_weights(name):
    cls = METHODS.get(name)
    assert cls.recipes.loss == RECIPES[name]
    assert cls.recipes.variants == VARIANTS.get(name, {})
    assert cls.recipes.variant_params == VARIANT_PARAMS.get(name, {})


def test_dkd_and_reviewkd_pair_overrides():
    dkd, rkd = METHODS.get("dkd"), METHODS.get("reviewkd")
    assert dkd.pair_overrides("resnet56", "resnet20") == {"methods": {"dkd": {"beta": 2.0}}}
    assert dkd.pair_overrides("resnet110", "resnet32") == {"methods": {"dkd": {"beta": 2.0}}}
    assert dkd.pair_overrides("vgg13", "vgg8") == {"methods": {"dkd": {"beta": 6.0}}}
    assert dkd.pair_overrides("wrn_40_2", "wrn_16_2") == {"methods": {"dkd": {"beta": 6.0}}}
    assert dkd.pair_overrides("resnet32x4", "resnet8x4") == {}  # default beta 8
    assert rkd.pair_overrides("resnet32x4", "resnet8x4") == {"loss": {"reviewkd": 5.0}}
    assert rkd.pair_overrides("resnet32x4", "ShuffleV2") == {"loss": {"reviewkd": 8.0}}
    assert rkd.pair_overrides("resnet56", "resnet20") == {"loss": {"reviewkd": 0.6}}
    assert rkd.pair_overrides("resnet110", "resnet32") == {"loss": {"reviewkd": 1.0}}


# Adapter structure -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ctx():
    student, teacher, s_shapes, t_shapes = probed_pair("resnet8", "resnet32x4")
    c = setup_context(s_shapes, t_shapes, student)
    return dataclasses.replace(c, teacher=teacher, train_targets=torch.arange(40) % 10)


def _make(name, ctx, **kw):
    cls = METHODS.get(name)
    return cls(cls.Params(**kw), ctx)


def _layers(seq):
    return [type(m) for m in seq]


def test_fitnet_regressor_is_conv_bn_relu(ctx):
    # resnet8 stage 2: 32 x 16 x 16; resnet32x4 stage 2: 128 x 16 x 16 -> a 1x1 conv, BN, ReLU
    reg = _make("fitnet", ctx).regressor
    assert isinstance(reg.conv, nn.Conv2d) and reg.conv.kernel_size == (1, 1)
    assert (reg.conv.in_channels, reg.conv.out_channels) == (32, 128)
    assert isinstance(reg.bn, nn.BatchNorm2d) and reg.bn.num_features == 128
    assert isinstance(reg.relu, nn.ReLU)
    x = torch.randn(2, 32, 16, 16)
    reg.eval()
    assert (reg(x) >= 0).all()


def test_vid_regressor_structure_and_initial_variance(ctx):
    vid = _make("vid", ctx)
    assert len(vid.pairs) == 3
    pair = vid.pairs[0]
    assert _layers(pair.regressor) == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d]
    convs = [m for m in pair.regressor if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == \
        [(16, 64, (1, 1)), (64, 64, (1, 1)), (64, 64, (1, 1))]
    var = torch.nn.functional.softplus(pair.log_scale) + 1e-5
    assert torch.allclose(var, torch.full_like(var, 5.0), atol=1e-5)


def test_cc_and_contrastive_embeds_are_128_wide(ctx):
    cc = _make("cc", ctx)
    assert (cc.embed_s.linear.in_features, cc.embed_s.linear.out_features) == (64, 128)
    assert (cc.embed_t.linear.in_features, cc.embed_t.linear.out_features) == (256, 128)
    # RepDistiller's LinearEmbed: a plain linear map, no L2 normalisation of the embedding
    assert not torch.allclose(cc.embed_s(torch.randn(3, 64)).norm(dim=1), torch.ones(3))
    crd = _make("crd", ctx, nce_k=64)
    assert crd.memory_s.shape == (40, 128) and crd.memory_t.shape == (40, 128)
    assert crd.embed_s.linear.out_features == 128
    rrd = _make("rrd", ctx)
    assert rrd.queue.shape == (16384, 128)
    dcd = _make("dcd", ctx)
    assert dcd.tau.item() == 1.0 and dcd.b.item() == 0.0


def test_ft_paraphraser_and_translator_rate(ctx):
    ft = _make("ft", ctx)  # teacher 256 channels, k 0.5 -> 128 factor channels
    enc = [m for m in ft.paraphraser.encoder if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in enc] == [(256, 256), (256, 128), (128, 128)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ft.paraphraser.modules())
    tr = [m for m in ft.translator if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in tr] == [(64, 64), (64, 128), (128, 128)]
    assert any(isinstance(m, nn.BatchNorm2d) for m in ft.translator)
    leaky = [m for m in ft.paraphraser.modules() if isinstance(m, nn.LeakyReLU)]
    assert leaky and all(m.negative_slope == 0.1 for m in leaky)


def test_simkd_projector_structure(ctx):
    proj = _make("simkd", ctx).projector  # 64 -> 128 (C_t / 2) -> 256
    assert _layers(proj) == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 3
    convs = [m for m in proj if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias is None) for c in convs] == \
        [(64, 128, (1, 1), True), (128, 128, (3, 3), True), (128, 256, (1, 1), True)]


def test_semckd_projector_and_embed_widths(ctx):
    sem = _make("semckd", ctx)
    assert len(sem.projectors) == 9 and len(sem.query) == 3 and len(sem.key) == 3
    convs = [m for m in sem.projectors[0] if isinstance(m, nn.Conv2d)]  # student 16 -> teacher 64: mid 128
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == \
        [(16, 128, (1, 1)), (128, 128, (3, 3)), (128, 64, (1, 1))]
    q = sem.query[0]
    assert (q.linear1.in_features, q.linear1.out_features, q.linear2.out_features) == (8, 4, 2)  # B 8, B/4 = 2


def test_reviewkd_mid_channels(ctx):
    rk = _make("reviewkd", ctx)
    assert len(rk.abfs) == 4  # 3 stage levels + the pooled vector
    assert all(abf.conv1[0].out_channels == 64 for abf in rk.abfs)  # min(512, student pooled width 64)
    assert rk.abfs[0].att_conv is None and all(abf.att_conv is not None for abf in rk.abfs[1:])
    assert [abf.conv2[0].out_channels for abf in rk.abfs] == [256, 256, 128, 64]  # deepest first


def test_srrl_connector_structure(ctx):
    conn = _make("srrl", ctx).connector
    assert isinstance(conn.conv, nn.Conv2d) and conn.conv.kernel_size == (1, 1) and conn.conv.bias is None
    assert (conn.conv.in_channels, conn.conv.out_channels) == (64, 256)
    assert isinstance(conn.bn, nn.BatchNorm2d) and isinstance(conn.relu, nn.ReLU)

"""DS-SRD / Good-DA-in-KD input mixing and the `augment` term: each mode on hand-built batches, the term's value
against hand computations, gradient routing, defaults, bad input, CLI runs on digits for each mode."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdzoo.data.input_mixing import (
    MODES,
    PixelStats,
    cutmix,
    cutmix_box,
    cutout,
    derangement,
    mix_inputs,
    mixup,
)
from kdzoo.distillers.augment import AugmentParams, entropy, per_sample_kl
from kdzoo.distillers.kd import kd_loss
from kdzoo.errors import ConfigError
from tests.conftest import CONFIGS, FAST, run_cli
from tests.method_harness import (
    assert_gradient_routing,
    backward_once,
    build_regime,
    random_batch,
)

PLAIN = PixelStats((0.0,), (1.0,))


def constant_images(b: int = 6, size: int = 32, channels: int = 1) -> torch.Tensor:
    """Image i is all i + 1: every pixel says which image it came from."""
    return (torch.arange(b, dtype=torch.float32) + 1).view(b, 1, 1, 1).expand(b, channels, size, size).clone()


def test_cutmix_box_is_clipped_and_lambda_follows_the_clipped_area():
    # lam 0.19 -> side ratio 0.9 -> int(32 * 0.9) = 28; centre (2, 30): rows 2 +- 14 -> [0, 16), cols [16, 32)
    assert cutmix_box(32, 32, 0.19, centre=(2, 30)) == (0, 16, 16, 32)
    assert cutmix_box(32, 32, 0.19, centre=(16, 16)) == (2, 30, 2, 30)
    torch.manual_seed(0)
    x = constant_images()
    for _ in range(20):
        mixed = cutmix(x)
        assert not bool((mixed.partner == mixed.source).any())  # no self-pairs
        for i in range(x.shape[0]):
            own = (mixed.inputs[i] == i + 1).float().mean()
            other = (mixed.inputs[i] == mixed.partner[i] + 1).float().mean()
            assert own + other == 1
            assert own == pytest.approx(float(mixed.lam[i]), abs=1e-6)  # lam recomputed from the clipped box
        pasted = mixed.inputs[0, 0] != 1
        if pasted.any():  # the pasted region is one rectangle, the same for every image
            rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
            assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
            assert torch.equal(mixed.inputs[1, 0] != 2, pasted)


def test_derangement_has_no_fixed_points():
    torch.manual_seed(0)
    for n in range(2, 12):
        perm = derangement(n)
        assert sorted(perm.tolist()) == list(range(n)) and not bool((perm == torch.arange(n)).any())


def test_cutout_makes_one_clipped_hole_of_side_eight_on_32x32():
    torch.manual_seed(0)
    out = cutout(torch.ones(50, 3, 32, 32), 8)
    for image in out:
        hole = image[0] == 0
        assert torch.equal(hole, (image == 0).all(0))  # all channels
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert hole[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert len(rows) <= 8 and len(cols) <= 8 and hole.sum() == len(rows) * len(cols) >= 16
    assert any(int(img[0].eq(0).sum()) == 64 for img in out)  # an interior hole is 8x8


def test_cutmix_pick_keeps_exactly_the_b_highest_scores_of_the_pool():
    torch.manual_seed(3)
    x = torch.randn(8, 3, 16, 16)
    pools = []

    def score(pool):
        pools.append(pool)
        return pool.mean(dim=(1, 2, 3))

    picked = mix_inputs("cutmix_pick", x, PLAIN, n_run=3, score=score)
    pool = pools[0]
    assert pool.shape[0] == 24 and picked.inputs.shape == x.shape
    best = pool.mean(dim=(1, 2, 3)).topk(8).indices
    assert torch.equal(picked.inputs, pool[best])


def test_mixup_is_one_lambda_per_batch_with_a_partner():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8)
    m = mixup(x)
    lam = float(m.lam[0])
    assert torch.all(m.lam == lam) and not bool((m.partner == m.source).any())
    assert torch.allclose(m.inputs, lam * x + (1 - lam) * x[m.partner])
    logits = torch.randn(6, 5)
    assert torch.allclose(m.interpolate(logits), lam * logits + (1 - lam) * logits[m.partner])


def test_flip_and_crop_flip_act_per_image():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    flipped = mix_inputs("flip", x, PLAIN).inputs
    same = [torch.equal(a, b) for a, b in zip(flipped, x)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and 10 < sum(mirrored) < 54
    stats = PixelStats((0.5,), (0.25,))  # a zero pixel is -2 after normalisation: the padding's value
    cropped = mix_inputs("crop+flip", x, stats).inputs
    padded = F.pad(x, (1, 1, 1, 1), value=-2.0)  # size / 8 = 1
    offsets = set()
    for a, p in zip(cropped, padded):
        found = [(dy, dx) for dy in range(3) for dx in range(3)
                 if torch.equal(a, p[:, dy:dy + 8, dx:dx + 8]) or torch.equal(a, p[:, dy:dy + 8, dx:dx + 8].flip(-1))]
        assert found
        offsets.update(found)
    assert len(offsets) > 3  # each image its own offset


@pytest.mark.parametrize("channels", [1, 3])
def test_autoaugment_runs_per_image_on_pixels(channels):
    torch.manual_seed(0)
    stats = PixelStats((0.5,) * channels, (0.25,) * channels)
    x = (torch.rand(16, channels, 32, 32) - 0.5) / 0.25
    out = mix_inputs("autoaugment", x, stats).inputs
    assert out.shape == x.shape and out.dtype == x.dtype
    changed = [not torch.allclose(a, b, atol=0.02) for a, b in zip(out, x)]
    assert 0 < sum(changed)


def test_unknown_mode_and_bad_n_run_are_refused():
    with pytest.raises(ConfigError, match="unknown input-mixing mode"):
        mix_inputs("rotate", torch.zeros(2, 1, 4, 4), PLAIN)
    with pytest.raises(ConfigError, match="n_run"):
        mix_inputs("cutmix_pick", torch.zeros(2, 1, 4, 4), PLAIN, n_run=0, score=lambda p: p.sum((1, 2, 3)))


# The augment term --------------------------------------------------------------------------------------------
def test_published_defaults():
    p = AugmentParams()
    assert (p.mode, p.n_run, p.criterion, p.weights, p.teacher_target, p.T) == \
        ("cutmix_pick", 2, "student_entropy", [1.0, 0.0, 1.0], True, 4.0)
    from kdzoo.config import load_config

    cfg = load_config(CONFIGS / "cifar100" / "dssrd" / "augment" / "cutmix_pick_student_entropy.yaml")
    assert cfg.loss == {"ce": 0.1, "augment": 0.9, "crd": 0.8, "proto": 0.8}  # DS-SRD's r, a, b, c
    assert cfg.methods["augment"]["weights"] == [1.0, 0.0, 1.0] and cfg.methods["augment"]["n_run"] == 2


def _regime(tmp_path, **augment):
    return build_regime(tmp_path, "resnet8", "resnet8", {"augment": 1.0}, {"augment": augment})


def test_identity_mode_reduces_to_kd_and_weights_add(tmp_path):
    for target in (True, False):
        r = _regime(tmp_path, mode="identity", weights=[0.0, 0.0, 1.0], teacher_target=target)
        r.train(False)  # BN in eval: the two student forwards of the same images agree
        batch = random_batch(r)
        term = r.phases()[-1].step(batch, None)["augment"]
        s, t = r.student(batch.inputs), r.teacher(batch.inputs).logits
        assert float(term.detach()) == pytest.approx(float(kd_loss(s, t, 4.0).detach()), rel=1e-5)
    r = _regime(tmp_path, mode="identity", weights=[2.0, 0.0, 3.0])
    r.train(False)
    batch = random_batch(r)
    s, t = r.student(batch.inputs), r.teacher(batch.inputs).logits
    assert float(r.phases()[-1].step(batch, None)["augment"].detach()) == pytest.approx(5 * float(kd_loss(s, t, 4.0).detach()), rel=1e-5)


def test_mix_ce_uses_both_labels_with_the_recomputed_lambda(tmp_path):
    r = _regime(tmp_path, mode="cutmix", weights=[0.0, 1.0, 0.0])
    r.train(False)
    batch = random_batch(r)
    torch.manual_seed(5)
    term = float(r.phases()[-1].step(batch, None)["augment"].detach())
    torch.manual_seed(5)
    m = cutmix(batch.inputs)
    z = r.student(m.inputs)
    y = batch.targets
    lam = float(m.lam[0])
    expected = lam * F.cross_entropy(z, y) + (1 - lam) * F.cross_entropy(z, y[m.partner])
    assert term == pytest.approx(float(expected.detach()), rel=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_the_student_alone_in_every_mode(tmp_path, mode):
    r = _regime(tmp_path, mode=mode, weights=[0.0, 1.0, 1.0])  # no KD on x: x_aug alone must train the student
    terms = assert_gradient_routing(r, random_batch(r))
    assert float(terms["augment"].detach()) > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in r.student.parameters() if p.requires_grad
               and p.dim() > 1)


def test_pick_scores_without_gradients_and_criteria_rank_as_defined():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    p_t, log_p_s = F.softmax(t / 4, 1), F.log_softmax(s / 4, 1)
    assert torch.allclose(per_sample_kl(s, t, 4.0), (p_t * (p_t.log() - log_p_s)).sum(1), atol=1e-6)
    assert torch.allclose(entropy(s), -(F.softmax(s, 1) * F.log_softmax(s, 1)).sum(1), atol=1e-6)


@pytest.mark.parametrize("criterion", ["student_entropy", "teacher_entropy", "kld"])
def test_every_criterion_trains(tmp_path, criterion):
    r = _regime(tmp_path, mode="cutmix_pick", criterion=criterion)
    terms = backward_once(r, random_batch(r))
    assert torch.isfinite(terms["augment"])


@pytest.mark.parametrize("section, message", [
    ({"mode": "rotate"}, "unknown input-mixing mode"), ({"criterion": "loss"}, "unknown criterion"),
    ({"n_run": 0}, "methods.augment.n_run"), ({"weights": [1, 1]}, "3 weights")])
def test_bad_parameters_are_refused(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message):
        _regime(tmp_path, **section)


def test_cli_bad_mode_exits_2(tmp_path, digits_teacher, capsys):
    code = run_cli("distill", "-c", CONFIGS / "digits" / "dssrd" / "kd_cutmix.yaml", "--out", tmp_path / "r",
                   f"teacher.checkpoint={digits_teacher}", "methods.augment.mode=rotate", *FAST)
    assert code == 2 and "unknown input-mixing mode" in capsys.readouterr().err


@pytest.mark.parametrize("mode", MODES)
def test_cli_runs_each_mode_on_digits(tmp_path, digits_teacher, mode):
    code = run_cli("distill", "-c", CONFIGS / "digits" / "dssrd" / "crd_kd_cutmix_pick.yaml", "--out",
                   tmp_path / "r", "epochs=1", f"teacher.checkpoint={digits_teacher}", f"methods.augment.mode={mode}",
                   "methods.augment.weights=[1,1,1]", *FAST)
    assert code == 0


def test_scoring_the_pool_leaves_the_students_bn_statistics(tmp_path):
    r = _regime(tmp_path, mode="cutmix_pick", weights=[0.0, 0.0, 1.0])
    r.train(True)
    batch = random_batch(r)
    from kdzoo.distillers.context import StepContext

    sources = {"student": r.bundle.student, "teacher": r.teacher}
    ctx = StepContext(batch, None, sources)
    before = {k: v.clone() for k, v in r.student.state_dict().items() if "running" in k or "tracked" in k}
    ctx.no_grad_features("student", ctx.add_view("pool", batch.inputs), keep_statistics=True)
    after = r.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    ctx.no_grad_features("student", ctx.add_view("pool2", batch.inputs))  # without: a training forward moves them
    assert any(not torch.equal(before[k], r.student.state_dict()[k]) for k in before)


def test_teacher_view_with_a_teacher_cache_is_refused(tmp_path, digits_teacher, capsys):
    code = run_cli("distill", "-c", CONFIGS / "digits" / "kd.yaml", "--out", tmp_path / "r", "teacher.cache=true",
                   f"teacher.checkpoint={digits_teacher}", "methods.kd.teacher_view=x", *FAST)
    assert code == 2 and "teacher_view" in capsys.readouterr().err


DSSRD_RECIPES = sorted([*(p for d in ("cifar100", "fashion_mnist", "digits") for p in (CONFIGS / d / "dssrd").rglob("*.yaml")),
                        *CONFIGS.glob("*/self_supervised/*.yaml"), CONFIGS / "tabular" / "covtype_byol.yaml"])
BINDING_KEYS = ("teacher_view", "view", "teacher", "student", "detach_teacher")


@pytest.mark.parametrize("path", DSSRD_RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_dssrd_recipe_validates_its_method_parameters(path):
    from kdzoo.config import load_config
    from kdzoo.config.validate import from_dict
    from kdzoo.data.input_mixing import check_mode
    from kdzoo.distillers import METHODS
    from kdzoo.distillers.augment import CRITERIA
    from kdzoo.program.methods import flat_sections, method_instances
    from kdzoo.regimes import REGIMES

    cfg = load_config(path)
    REGIMES.get(cfg.regime)
    method_instances(cfg.loss)
    for name, section in flat_sections(cfg.methods).items():
        assert name in cfg.loss, f"methods.{name} has no loss term (the run would refuse it)"
        params = from_dict(METHODS.get(name.split(".")[-1]).Params,
                           {k: v for k, v in section.items() if k not in BINDING_KEYS}, name)
        if name == "augment":
            check_mode(params.mode, params.n_run)
            assert params.criterion in CRITERIA and len(params.weights) == 3
    if cfg.regime == "double_student":
        assert cfg.dataset.views == {"x": "jitter", "x2": "jitter"} and cfg.methods["kd"]["teacher_view"] == "x2"
    assert len(DSSRD_RECIPES) >= 9 + 4 + 1 + 12 + 9

"""`dataset.loader: device` against the PyTorch loader: the same images in the same batches (order per seed and
epoch, DDP shards), unaugmented batches equal bit for bit, every augmented image one of its pad-crop/flip
candidates with the offsets and flips distributed as the per-sample transforms draw them, an epoch resumed equal to
an uninterrupted one (loader and whole run), and one-line refusals of what it cannot batch."""
from __future__ import annotations

import json

import pytest
import torch
from torchvision.transforms import Compose

from kdzoo.config import load_config
from kdzoo.core.dist import DistInfo
from kdzoo.data.device_loader import DeviceLoader, layout
from kdzoo.data.in_memory import InMemoryImageDataset
from kdzoo.data.loaders import make_loader, set_loader_epoch
from kdzoo.data.transforms import Normalize, PadRandomCrop, RandomHorizontalFlip
from kdzoo.data.wrappers import IndexedDataset, subset
from kdzoo.engine.trainer import make_engine
from kdzoo.errors import ConfigError
from tests.conftest import CONFIGS, FAST, run_cli
from tests.test_engine import _stop_after_epochs, _weights

CPU = torch.device("cpu")
PAD = 2
NORMALIZE = Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


def dataset(n: int = 40, train: bool = True, pixels=None) -> InMemoryImageDataset:
    images = pixels if pixels is not None else torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8,
                                                             generator=torch.Generator().manual_seed(1))
    steps = [PadRandomCrop(PAD), RandomHorizontalFlip()] if train else []
    return InMemoryImageDataset(images, torch.arange(len(images)) % 5, classes=list("abcde"),
                                transform=Compose([*steps, NORMALIZE]))


def device_loader(ds, **kw) -> DeviceLoader:
    args = dict(batch_size=16, train=True, seed=3, drop_last=False, device=CPU, dist=None)
    return DeviceLoader(ds, **{**args, **kw})


def epoch(loader, e: int) -> list:
    set_loader_epoch(loader, e)
    return list(loader)


def test_unaugmented_batches_equal_the_pytorch_loaders_bit_for_bit():
    ds = subset(dataset(train=False), torch.arange(3, 37))  # through a subset too
    ours = epoch(device_loader(ds, train=False, batch_size=8), 0)
    theirs = list(make_loader(ds, batch_size=8, train=False, seed=3))
    assert len(ours) == len(theirs) == 5
    for (x, y), (x2, y2) in zip(ours, theirs):
        assert x.dtype == torch.float32 and torch.equal(x, x2) and torch.equal(y, y2)


@pytest.mark.parametrize("drop_last", [False, True])
def test_training_batches_hold_the_pytorch_loaders_images_in_its_order(drop_last):
    ds = IndexedDataset(dataset())
    ours, theirs = device_loader(ds, drop_last=drop_last), make_loader(ds, batch_size=16, train=True, seed=3,
                                                                       drop_last=drop_last)
    assert len(ours) == len(theirs) == (2 if drop_last else 3)
    for e in (0, 4):
        a, b = epoch(ours, e), epoch(theirs, e)
        assert [torch.equal(x[2], y[2]) and torch.equal(x[1], y[1]) for x, y in zip(a, b)] == [True] * len(b)
    assert not torch.equal(epoch(ours, 0)[0][2], epoch(ours, 1)[0][2])  # reshuffled per epoch


def candidates(image: torch.Tensor) -> torch.Tensor:
    """(2P+1, 2P+1, 2, C, H, W): the uint8 image under every (top, left) pad-crop offset, unflipped and flipped,
    normalised."""
    c, h, w = image.shape
    padded = torch.nn.functional.pad(image, (PAD,) * 4)
    crops = torch.stack([torch.stack([padded[:, t:t + h, s:s + w] for s in range(2 * PAD + 1)])
                         for t in range(2 * PAD + 1)])
    return NORMALIZE(torch.stack([crops, crops.flip(-1)], dim=2))


def draws(loader, epochs: int, sources: torch.Tensor) -> torch.Tensor:
    """(top, left, flipped) of every image the loader gave in `epochs` epochs, found among the candidates of its
    source (the uint8 pixels)."""
    found = []
    for e in range(epochs):
        for x, _, index in epoch(loader, e):
            for image, i in zip(x, index.tolist()):
                match = (candidates(sources[i]) == image).flatten(3).all(-1).nonzero()
                assert len(match) == 1, "an augmented image is not exactly one pad-crop/flip of its source"
                found.append(match[0])
    return torch.stack(found)


def test_crop_offsets_and_flips_are_distributed_as_the_per_sample_transforms_draw_them():
    # distinct pixels, so that every (offset, flip) candidate differs from every other
    pixels = torch.stack([torch.randperm(256, generator=torch.Generator().manual_seed(i))[:192].view(3, 8, 8)
                          for i in range(40)]).to(torch.uint8)
    ds = IndexedDataset(dataset(pixels=pixels))
    ours = draws(device_loader(ds), 40, pixels)  # 1,600 images
    theirs = draws(make_loader(ds, batch_size=16, train=True, seed=3), 40, pixels)
    n = len(ours)
    for column, values in ((0, 2 * PAD + 1), (1, 2 * PAD + 1), (2, 2)):
        expected = n / values
        for counts in (torch.bincount(ours[:, column], minlength=values),
                       torch.bincount(theirs[:, column], minlength=values)):
            # each count within 4.5 standard deviations of the uniform expectation
            sd = (n * (1 / values) * (1 - 1 / values)) ** 0.5
            assert ((counts - expected).abs() < 4.5 * sd).all(), (column, counts)
    # top and left are drawn independently: all 25 pairs occur
    assert len({(int(t), int(s)) for t, s, _ in ours}) == (2 * PAD + 1) ** 2


def test_a_resumed_epoch_draws_what_an_uninterrupted_one_does():
    ds = IndexedDataset(dataset())
    uninterrupted = device_loader(ds)
    for e in range(3):
        last = epoch(uninterrupted, e)
    resumed = epoch(device_loader(ds), 2)  # a fresh loader set to epoch 2, as after --resume
    for a, b in zip(last, resumed):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(epoch(device_loader(ds), 1)[0][0], last[0][0])


def test_ddp_ranks_draw_distributed_samplers_shards_and_their_own_augmentations():
    ds = IndexedDataset(dataset(n=37))
    ranks = [device_loader(ds, dist=DistInfo(rank=r, world_size=2, local_rank=r)) for r in (0, 1)]
    shards = [torch.cat([b[2] for b in epoch(loader, 5)]) for loader in ranks]
    torch_shards = [torch.cat([b[2] for b in epoch(make_loader(ds, batch_size=16, train=True, seed=3,
                                                                  distributed=True, rank=r, world_size=2), 5)])
                    for r in (0, 1)]
    assert [s.tolist() for s in shards] == [s.tolist() for s in torch_shards]
    assert set(shards[0].tolist()) | set(shards[1].tolist()) == set(range(37))
    # the same image on both ranks (DistributedSampler pads the shards) is augmented differently
    assert len(shards[0]) == len(shards[1]) == 19
    for loader in ranks:
        set_loader_epoch(loader, 5)
    same = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    assert not torch.equal(ranks[0].batch(same)[0], ranks[1].batch(same)[0])


def test_a_resumed_run_on_the_device_loader_equals_the_uninterrupted_one(tmp_path, digits_teacher):
    common = ["epochs=2", "dataset.loader=device", f"teacher.checkpoint={digits_teacher}", *FAST]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli("distill", "-c", CONFIGS / "digits" / "kd.yaml", "--out", full, *common) == 0
    engine = make_engine(load_config(CONFIGS / "digits" / "kd.yaml", common), part, quiet=True)
    _stop_after_epochs(engine, 1)
    assert run_cli("distill", "--resume", part, *FAST) == 0
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["best_value"] > 50  # it learns (digits, 2 epochs)


def test_the_device_loader_really_serves_the_run(tmp_path, digits_teacher, monkeypatch):
    """The run's training and test streams are read by DeviceLoader (not silently by the PyTorch loader)."""
    served = []
    original = DeviceLoader.batch

    def counting(self, index):
        served.append(self.layout.with_index)
        return original(self, index)

    monkeypatch.setattr(DeviceLoader, "batch", counting)
    assert run_cli("distill", "-c", CONFIGS / "digits" / "crd.yaml", "--out", tmp_path / "run", "epochs=1",
                   "dataset.subset.size=200", "methods.crd.nce_k=32", "dataset.loader=device",
                   f"teacher.checkpoint={digits_teacher}", *FAST) == 0
    assert set(served) == {True, False}  # training (with CRD's indices) and evaluation


@pytest.mark.parametrize("overrides, says", [
    (["dataset.views={x: train, s: strong}"], "view 's' has FixMatchRandAugment ops"),
    (["teacher.cache=replay"], "use dataset.loader: torch"),
])
def test_what_it_cannot_batch_is_refused_in_one_line(tmp_path, digits_teacher, capsys, overrides, says):
    code = run_cli("distill", "-c", CONFIGS / "digits" / "kd.yaml", "--out", tmp_path / "run", "epochs=1",
                   "dataset.loader=device", f"teacher.checkpoint={digits_teacher}", *FAST, *overrides)
    err = capsys.readouterr().err.strip()
    assert code == 2 and says in err and len(err.splitlines()) == 1, err


def test_imagenet_pipelines_are_refused(tmp_path):
    from PIL import Image

    from kdzoo.data.registry import build_dataset

    for split in ("train", "val"):
        folder = tmp_path / split / "cls"
        folder.mkdir(parents=True)
        Image.new("RGB", (40, 30)).save(folder / "a.JPEG")
    with pytest.raises(ConfigError, match="RandomResizedCrop"):
        layout(build_dataset("imagefolder", "train", root=str(tmp_path)))


@pytest.mark.parametrize("image_size", [None, 32])
def test_tinyimagenet_files_decode_once_into_batches_equal_to_the_pytorch_loaders(tmp_path, image_size):
    """TinyImageNet is read from JPEG files: decoded (and resized, when asked) once into the device store, through a
    subset too; its unaugmented batches equal the PyTorch loader's."""
    from kdzoo.data.registry import build_dataset
    from tests.test_data import write_tiny_imagenet_tree

    write_tiny_imagenet_tree(tmp_path)
    common = dict(root=str(tmp_path), image_size=image_size)
    for ds in (build_dataset("tinyimagenet", "test", **common),
               subset(build_dataset("tinyimagenet", "train", augment=False, **common), torch.tensor([3, 0, 2]))):
        ours = epoch(device_loader(ds, train=False, batch_size=2), 0)
        theirs = list(make_loader(ds, batch_size=2, train=False, seed=3))
        assert len(ours) == len(theirs) == 2
        for (x, y), (x2, y2) in zip(ours, theirs):
            assert x.shape[-1] == (image_size or 64) and torch.equal(x, x2) and torch.equal(y, y2)


def test_batched_colour_jitter_equals_torchvisions_per_image_operations():
    """Each image under its own factors and order: the same as torchvision's adjust_* applied one image at a
    time in that order (images whose jitter is not applied stay as they were)."""
    from torchvision.transforms.v2 import ColorJitter
    from torchvision.transforms.v2 import functional as TF

    from kdzoo.data.batched_transforms import colour_jitter, jitter_params

    x = torch.rand(16, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    params = jitter_params(ColorJitter(0.4, 0.4, 0.4, 0.1), 16, 0.5, torch.Generator().manual_seed(1), CPU)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    expected = []
    for i, image in enumerate(x):
        if params["apply"][i]:
            for op in params["order"][i].tolist():
                image = ops[op](image, float(params["factors"][op][i]))
        expected.append(image)
    torch.testing.assert_close(colour_jitter(x, params), torch.stack(expected), atol=2e-6, rtol=0)
    assert 0 < int(params["apply"].sum()) < 16  # both kinds of image are checked


def test_jitter_draws_are_distributed_as_torchvisions():
    """RandomApply p 0.8; the order a uniform permutation of the 4 operations; each factor uniform in its range."""
    from torchvision.transforms.v2 import ColorJitter

    from kdzoo.data.batched_transforms import jitter_params

    n = 24_000
    params = jitter_params(ColorJitter(0.4, 0.4, 0.4, 0.1), n, 0.8, torch.Generator().manual_seed(0), CPU)
    assert abs(params["apply"].float().mean() - 0.8) < 4.5 * (0.8 * 0.2 / n) ** 0.5
    perms = torch.unique(params["order"], dim=0, return_counts=True)[1]
    assert len(perms) == 24 and (perms - n / 24).abs().max() < 4.5 * (n / 24) ** 0.5
    for factor, (low, high) in zip(params["factors"], [(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)]):
        assert low <= factor.min() and factor.max() <= high
        assert abs(factor.mean() - (low + high) / 2) < 0.01 * (high - low)


def test_jitter_views_through_the_device_loader_grey_as_often_as_the_pytorch_loaders():
    """The `jitter` view (DS-SRD's two views): two independent views per image; about p = 0.2 of them grey
    (equal channels in pixel space), as from the per-sample pipeline."""
    from kdzoo.data.registry import _builder
    from kdzoo.data.views import IDENTITY, MultiViewDataset, pipeline

    images = torch.randint(0, 256, (200, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    base = dataset(pixels=images)
    base.transform = IDENTITY
    info = _builder("cifar100").info(None)
    base.info = info
    views = MultiViewDataset(base, {v: pipeline("jitter", _builder("cifar100"), info, True) for v in ("x", "x2")})
    mean, std = torch.tensor(info.mean).view(1, 3, 1, 1), torch.tensor(info.std).view(1, 3, 1, 1)

    def grey_share(loader) -> float:
        grey = total = 0
        for e in range(5):
            for x, _ in epoch(loader, e):
                for name in ("x", "x2"):
                    pixels = x[name] * std + mean
                    grey += int(((pixels[:, 0] - pixels[:, 1]).abs().amax(dim=(1, 2)) < 1e-5).sum())
                    total += len(pixels)
        return grey / total

    ours = device_loader(views, batch_size=50)
    first = epoch(ours, 0)[0][0]
    assert not torch.equal(first["x"], first["x2"])  # two independent views
    share, theirs = grey_share(ours), grey_share(make_loader(views, batch_size=50, train=True, seed=3))
    sd = (0.2 * 0.8 / 2000) ** 0.5
    assert abs(share - 0.2) < 4.5 * sd and abs(theirs - 0.2) < 4.5 * sd, (share, theirs)


def test_the_dssrd_recipe_with_jitter_views_trains_on_the_device_loader(tmp_path, digits_teacher):
    assert run_cli("distill", "-c", CONFIGS / "digits" / "dssrd" / "dssrd.yaml", "--out", tmp_path / "run",
                   "epochs=1", "dataset.subset.size=300", "dataset.loader=device",
                   f"teacher.checkpoint={digits_teacher}", *FAST) == 0

"""kdzoo.data: every dataset is loaded from tiny files written in its real on-disk format."""
from __future__ import annotations

import gzip
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as classic

from kdzoo.data import (
    DatasetInfo,
    IndexedDataset,
    ShardSampler,
    build_dataset,
    dataset_info,
    image_info,
    list_datasets,
    make_loader,
    set_loader_epoch,
    split_train_val,
    stratified_subset,
    subset,
)
from kdzoo.data import digits as digits_module
from kdzoo.data import fashion_mnist as fashion_mnist_module
from kdzoo.data.registry import _builder
from kdzoo.data.transforms import PadRandomCrop
from kdzoo.errors import DatasetError

RNG = np.random.default_rng(0)


def identity(image):
    return image


# --------------------------------------------------------------------------- file writers (real formats)


def write_cifar10(root: Path, per_batch: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    """cifar-10-batches-py/: five train batches, a test batch and batches.meta, pickled dicts as in the archive."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        data = RNG.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)  # rows: R plane, G plane, B plane
        labels = RNG.integers(0, 10, size=per_batch).tolist()
        entry = {"batch_label": name, "labels": labels, "data": data, "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        written[name] = (data, labels)
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def write_cifar100(root: Path, n_train: int = 5, n_test: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    """cifar-100-python/: train, test and meta with fine and coarse labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name, n in [("train", n_train), ("test", n_test)]:
        data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = RNG.integers(0, 100, size=n).tolist()
        entry = {"filenames": [f"{i}.png" for i in range(n)], "batch_label": name, "fine_labels": fine,
                 "coarse_labels": [label // 5 for label in fine], "data": data}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        written[name] = (data, fine)
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"coarse{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: two zero bytes, type code 0x08 (uint8), ndim, big-endian uint32 dims, then the data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(folder: Path, n_train: int = 6, n_test: int = 4, compressed: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for prefix, n in [("train", n_train), ("t10k", n_test)]:
        images = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, size=n).astype(np.uint8)
        for kind, array in [("images-idx3", images), ("labels-idx1", labels)]:
            name = f"{prefix}-{kind}-ubyte"
            if compressed:
                (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
            else:
                (folder / name).write_bytes(idx_bytes(array))
        written[prefix] = (images, labels)
    return written


def write_stl10(root: Path, n_train: int = 3, n_test: int = 2):
    """stl10_binary/: *_X.bin uint8 images stored channel by channel, column-major; *_y.bin labels 1..10."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    written = {}
    for split, n in [("train", n_train), ("test", n_test)]:
        images = RNG.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)  # N, C, H, W
        labels = RNG.integers(0, 10, size=n)
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())
        (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        written[split] = (images, labels)
    (folder / "class_names.txt").write_text("\n".join(f"stl{i}" for i in range(10)) + "\n")
    return written


def save_image(path: Path, size=(40, 30), mode="RGB", fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    pixels = RNG.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8).squeeze()
    Image.fromarray(pixels, mode=mode).save(path, format=fmt)


def write_imagenet_tree(root: Path) -> None:
    """train/ has cat, dog, fox; val/ lacks cat, so its labels must still use the train indices."""
    for cls, count in [("cat", 2), ("dog", 3), ("fox", 1)]:
        for i in range(count):
            save_image(root / "train" / cls / f"{cls}_{i}.JPEG", fmt="JPEG")
    save_image(root / "val" / "dog" / "v0.png")
    save_image(root / "val" / "fox" / "v1.png")
    save_image(root / "val" / "fox" / "v2.png")


def write_tiny_imagenet_tree(root: Path) -> list[tuple[str, str]]:
    wnids = ["n01443537", "n01629819"]
    for wnid in wnids:
        for i in range(2):
            save_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", size=(64, 64), fmt="JPEG")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    val = [("val_0.JPEG", wnids[1]), ("val_1.JPEG", wnids[0]), ("val_2.JPEG", wnids[1])]
    for filename, _ in val:
        save_image(root / "val" / "images" / filename, size=(64, 64), mode="L", fmt="JPEG")  # some are grayscale
    (root / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in val))
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return val


def cifar_row_to_chw(row: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(row.reshape(3, 32, 32).copy())


# --------------------------------------------------------------------------- registry


def test_all_datasets_registered_and_unknown_names_rejected():
    assert set(list_datasets()) == {"cifar10", "cifar100", "fashion_mnist", "digits", "stl10", "imagefolder", "imagenet", "covtype",
                                   "higgs", "speech_commands", "tinyimagenet"}
    with pytest.raises(DatasetError, match="cifar100"):
        build_dataset("cifar101", "train")
    with pytest.raises(DatasetError, match="split"):
        build_dataset("digits", "val")


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_loads_torchvision_pickles(tmp_path):
    written = write_cifar10(tmp_path, per_batch=3)
    train = build_dataset("cifar10", "train", root=str(tmp_path), transform=identity)
    test = build_dataset("cifar10", "test", root=str(tmp_path))

    assert len(train) == 15 and len(test) == 3
    expected_train_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.targets.dtype == torch.long and train.targets.tolist() == expected_train_labels
    assert train.info == image_info("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert train.classes[3] == "class3"
    # Third sample of batch 2 = index 5: planes R, G, B of the row, untouched by the identity transform.
    image, label = train[5]
    assert torch.equal(image, cifar_row_to_chw(written["data_batch_2"][0][2])) and label == expected_train_labels[5]

    image, label = test[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == written["test_batch"][1][1]


def test_cifar100_loads_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    train = build_dataset("cifar100", "train", root=str(tmp_path))
    test = build_dataset("cifar100", "test", root=str(tmp_path), transform=identity)
    assert train.targets.tolist() == written["train"][1] and len(test) == 4
    assert train.info.num_classes == 100 and train.info.mean == (0.5071, 0.4867, 0.4408)
    assert train[0][0].shape == (3, 32, 32)
    assert torch.equal(test[3][0], cifar_row_to_chw(written["test"][0][3]))


def test_cifar_test_transform_matches_classic_totensor_normalize(tmp_path):
    written = write_cifar10(tmp_path, per_batch=2)
    test = build_dataset("cifar10", "test", root=str(tmp_path))
    info = test.info
    reference = classic.Compose([classic.ToTensor(), classic.Normalize(info.mean, info.std)])
    pil = Image.fromarray(written["test_batch"][0][0].reshape(3, 32, 32).transpose(1, 2, 0))
    torch.testing.assert_close(test[0][0], reference(pil), atol=1e-5, rtol=0)


def test_cifar_train_augmentation_is_a_padded_crop_or_its_mirror(tmp_path):
    write_cifar10(tmp_path, per_batch=2)
    raw = build_dataset("cifar10", "train", root=str(tmp_path), transform=identity)
    train = build_dataset("cifar10", "train", root=str(tmp_path))
    info = train.info
    torch.manual_seed(0)
    for index in range(4):
        augmented = train[index][0]
        original = raw[index][0].float() / 255
        padded = torch.nn.functional.pad(original, (4, 4, 4, 4))
        mean, std = torch.tensor(info.mean).view(3, 1, 1), torch.tensor(info.std).view(3, 1, 1)
        candidates = [
            (view - mean) / std
            for top in range(9)
            for left in range(9)
            for view in (padded[:, top : top + 32, left : left + 32],)
            for view in (view, view.flip(-1))
        ]
        assert any(torch.allclose(augmented, c, atol=1e-5) for c in candidates)


# --------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_debian_layout_idx_gz(tmp_path):
    written = write_fashion_mnist(tmp_path, n_train=6, n_test=4)
    train = build_dataset("fashion_mnist", "train", root=str(tmp_path), transform=identity)
    test = build_dataset("fashion_mnist", "test", root=str(tmp_path))
    assert len(train) == 6 and len(test) == 4
    assert train.targets.tolist() == written["train"][1].tolist()
    assert torch.equal(train[2][0], torch.from_numpy(written["train"][0][2]).unsqueeze(0))
    assert train.info == image_info("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,))
    image, label = test[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == written["t10k"][1][3]


def test_fashion_mnist_torchvision_layout_uncompressed(tmp_path):
    written = write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", compressed=False)
    test = build_dataset("fashion_mnist", "test", root=str(tmp_path), transform=identity)
    assert test.targets.tolist() == written["t10k"][1].tolist()
    assert torch.equal(test[0][0][0], torch.from_numpy(written["t10k"][0][0]))


@pytest.mark.skipif(not all(fashion_mnist_module._find_split_files(None, s) for s in ("train", "test")),
                    reason=f"Fashion-MNIST files absent ({fashion_mnist_module.DEBIAN_ROOT}); "
                           "apt-get install dataset-fashion-mnist (.ci/run does)")
def test_real_fashion_mnist_files():
    train = build_dataset("fashion_mnist", "train")  # default root: the Debian package's folder
    test = build_dataset("fashion_mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.info.num_classes == 10 and len(train.classes) == 10
    # Fashion-MNIST is exactly balanced, which checks that labels are read correctly.
    assert train.targets.bincount().tolist() == [6000] * 10
    assert test.targets.bincount().tolist() == [1000] * 10
    # The hard-coded statistics match the data: normalised training pixels have mean ~0 and std ~1.
    histogram = train.images.flatten().bincount(minlength=256).double()  # cheaper than 47M floats
    values = (torch.arange(256, dtype=torch.float64) / 255 - train.info.mean[0]) / train.info.std[0]
    mean = (histogram * values).sum() / histogram.sum()
    std = ((histogram * (values - mean) ** 2).sum() / histogram.sum()).sqrt()
    assert abs(mean.item()) < 1e-3 and abs(std.item() - 1) < 1e-3
    image, label = train[0]
    assert image.shape == (1, 28, 28) and label == 9  # the first training image is an ankle boot


# --------------------------------------------------------------------------- STL-10


def test_stl10_binary(tmp_path):
    written = write_stl10(tmp_path)
    train = build_dataset("stl10", "train", root=str(tmp_path), transform=identity)
    test = build_dataset("stl10", "test", root=str(tmp_path))
    assert len(train) == 3 and len(test) == 2
    assert train.targets.tolist() == written["train"][1].tolist()  # 1-based on disk, 0-based here
    assert torch.equal(train[1][0], torch.from_numpy(written["train"][0][1]))  # column-major undone
    assert train.classes == [f"stl{i}" for i in range(10)]
    assert train.info.image_size == 96 and test[0][0].shape == (3, 96, 96)

    small = build_dataset("stl10", "train", root=str(tmp_path), image_size=32)
    assert small.info.image_size == 32 and small[0][0].shape == (3, 32, 32)


# --------------------------------------------------------------------------- image folders


def test_imagenet_layout(tmp_path):
    write_imagenet_tree(tmp_path)
    info = dataset_info("imagefolder", root=str(tmp_path))
    assert info.name == "imagefolder" and info.num_classes == 3 and info.image_size == 224

    train = build_dataset("imagefolder", "train", root=str(tmp_path))
    assert len(train) == 6 and train.targets.tolist() == [0, 0, 1, 1, 1, 2]
    image, label = train[0]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and label == 0

    test = build_dataset("imagefolder", "test", root=str(tmp_path), image_size=32)
    assert test.targets.tolist() == [1, 2, 2]  # train's class indices although val has no "cat"
    assert test.info.image_size == 32 and test[2][0].shape == (3, 32, 32) and test[2][1] == 2


def test_tiny_imagenet_layout(tmp_path):
    val = write_tiny_imagenet_tree(tmp_path)
    train = build_dataset("imagefolder", "train", root=str(tmp_path))
    test = build_dataset("imagefolder", "test", root=str(tmp_path))
    assert train.info.name == "tinyimagenet" and train.info.num_classes == 2 and train.info.image_size == 64
    assert len(train) == 4 and train.targets.tolist() == [0, 0, 1, 1]  # *_boxes.txt is not an image
    wnids = sorted({w for _, w in val})
    assert test.targets.tolist() == [wnids.index(w) for _, w in val]
    image, label = test[0]
    assert image.shape == (3, 64, 64) and label == 1  # grayscale JPEG converted to RGB
    assert train[0][0].shape == (3, 64, 64)


# --------------------------------------------------------------------------- missing data


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("fashion_mnist", "train-images-idx3-ubyte.gz"),
        ("stl10", "stl10_binary"),
        ("imagefolder", "train/<class>/"),
    ],
)
def test_missing_data_is_one_line_naming_the_folder(tmp_path, name, expected):
    with pytest.raises(DatasetError) as error:
        build_dataset(name, "train", root=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{name}: no data in {tmp_path.resolve()}") and expected in message


def test_missing_data_message_stays_one_line_for_odd_paths(tmp_path):
    with pytest.raises(DatasetError) as error:
        build_dataset("cifar10", "test", root=str(tmp_path / "line\nbreak"))
    assert "\n" not in str(error.value) and "line break" in str(error.value)


def test_imagefolder_without_class_sorted_val_is_reported(tmp_path):
    save_image(tmp_path / "train" / "cat" / "a.png")
    save_image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", fmt="JPEG")  # unsorted ImageNet val
    with pytest.raises(DatasetError, match="class folders") as error:
        build_dataset("imagefolder", "test", root=str(tmp_path))
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------- digits


def test_digits_fixed_stratified_split():
    train = build_dataset("digits", "train", augment=False)
    test = build_dataset("digits", "test")
    assert (len(train), len(test)) == (1257, 540)
    assert train.info == image_info("digits", 10, 1, 8, (0.3056,), (0.3761,))

    train_idx, test_idx = digits_module.split_indices("train"), digits_module.split_indices("test")
    assert len(set(train_idx) | set(test_idx)) == 1797 and not set(train_idx) & set(test_idx)
    all_counts = Counter(np.concatenate([train.targets.numpy(), test.targets.numpy()]).tolist())
    train_counts = Counter(train.targets.tolist())
    for label, total in all_counts.items():
        assert abs(train_counts[label] - total * 1257 / 1797) <= 1

    # Pinned: the split must not drift (checkpoints and reported accuracies depend on it).
    assert test_idx[:8].tolist() == [10, 21, 24, 25, 28, 32, 34, 35] and int(test_idx.sum()) == 501287
    again = build_dataset("digits", "train", augment=False)
    assert torch.equal(again.images, train.images) and torch.equal(again.targets, train.targets)
    # The hard-coded statistics are the training set's: normalised mean ~0, std ~1.
    normalised = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(normalised.mean().item()) < 1e-3 and abs(normalised.std().item() - 1) < 2e-3


def test_image_size_override_and_default_transform():
    big = build_dataset("digits", "test", image_size=16)
    assert big.info.image_size == 16 and big[0][0].shape == (1, 16, 16)
    info = dataset_info("digits")
    eval_transform = _builder("digits").transform("train", info, False)
    train = build_dataset("digits", "train", transform=identity)
    image = train[0][0]
    torch.testing.assert_close(eval_transform(image), (image - 0.3056) / 0.3761)


# --------------------------------------------------------------------------- subsets and splits


def test_stratified_subset_counts_and_determinism():
    targets = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    for size in (0.1, 10):
        chosen = stratified_subset(targets, size, seed=0)
        assert Counter(targets[chosen].tolist()) == {0: 5, 1: 3, 2: 2}
        assert torch.equal(chosen, torch.sort(chosen).values) and len(set(chosen.tolist())) == len(chosen)
    assert Counter(targets[stratified_subset(targets, 0.01, seed=0)].tolist()) == {0: 1, 1: 1, 2: 1}
    assert Counter(targets[stratified_subset(targets, 7, seed=0)].tolist()) == {0: 4, 1: 2, 2: 1}
    assert torch.equal(stratified_subset(targets, 0.3, seed=3), stratified_subset(targets, 0.3, seed=3))
    assert not torch.equal(stratified_subset(targets, 0.3, seed=3), stratified_subset(targets, 0.3, seed=4))
    assert len(stratified_subset(targets, 1.0, seed=0)) == 100
    for bad in (0.0, 1.5, 0, 101, True):
        with pytest.raises(DatasetError):
            stratified_subset(targets, bad, seed=0)


def test_split_train_val_is_stratified_and_complete():
    targets = build_dataset("digits", "train").targets
    train_idx, val_idx = split_train_val(targets, 0.2, seed=0)
    assert len(train_idx) + len(val_idx) == len(targets)
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    val_counts, class_sizes = Counter(targets[val_idx].tolist()), Counter(targets.tolist())
    assert all(abs(val_counts[c] - 0.2 * n) <= 1 for c, n in class_sizes.items())
    assert torch.equal(split_train_val(targets, 0.2, seed=0)[1], val_idx)


def test_subset_and_indexed_dataset_keep_targets_and_info():
    data = build_dataset("digits", "test")
    part = subset(data, [5, 2, 9])
    assert part.targets.tolist() == data.targets[[5, 2, 9]].tolist() and part.info == data.info
    assert torch.equal(part[1][0], data[2][0]) and part[1][1] == int(data.targets[2])

    indexed = IndexedDataset(part)
    image, label, index = indexed[2]
    assert index == 2 and label == part.targets[2] and torch.equal(image, data[9][0])
    assert indexed.info == data.info and torch.equal(indexed.targets, part.targets)


# --------------------------------------------------------------------------- loaders


def epoch_indices(loader) -> list[int]:
    return [i for _, _, idx in loader for i in idx.tolist()]


def test_make_loader_order_is_a_function_of_seed_and_epoch():
    data = IndexedDataset(build_dataset("digits", "train"))

    def loader(seed):
        return make_loader(data, batch_size=200, train=True, seed=seed)

    first, same = epoch_indices(loader(1)), epoch_indices(loader(1))
    assert first == same and sorted(first) == list(range(len(data))) and first != sorted(first)
    assert epoch_indices(loader(2)) != first

    running = loader(1)
    orders = []
    for epoch in range(3):
        set_loader_epoch(running, epoch)
        orders.append(epoch_indices(running))
    assert orders[0] == first and orders[1] != orders[0] and orders[2] != orders[1]

    resumed = loader(1)  # a fresh loader jumping to epoch 2, as after resuming from a checkpoint
    set_loader_epoch(resumed, 2)
    assert epoch_indices(resumed) == orders[2]


def test_make_loader_with_workers_is_deterministic():
    data = IndexedDataset(build_dataset("digits", "train"))  # augmented: worker seeding matters

    def run():
        loader = make_loader(data, batch_size=128, train=True, seed=5, num_workers=2)
        set_loader_epoch(loader, 1)
        batches = list(loader)
        del loader  # shuts down the persistent workers
        return batches

    a, b = run(), run()
    assert [batch[2].tolist() for batch in a] == [batch[2].tolist() for batch in b]
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))


def test_eval_loader_is_sequential_and_sharded_without_duplicates():
    data = IndexedDataset(build_dataset("digits", "test"))  # 540 samples
    assert epoch_indices(make_loader(data, batch_size=64, train=False, seed=0)) == list(range(540))

    sampled = [list(ShardSampler(range(7), rank, 2)) for rank in range(2)]
    assert sampled == [[0, 2, 4, 6], [1, 3, 5]] and [len(ShardSampler(range(7), r, 2)) for r in range(2)] == [4, 3]

    shards = [
        epoch_indices(make_loader(data, batch_size=50, train=False, seed=0, distributed=True, rank=r, world_size=3))
        for r in range(3)
    ]
    assert sorted(sum(shards, [])) == list(range(540))


def test_distributed_train_loader_uses_epoch_seeded_shards():
    data = IndexedDataset(build_dataset("digits", "train"))  # 1257: padded to 1258 over 2 ranks
    loaders = [make_loader(data, batch_size=100, train=True, seed=0, distributed=True, rank=r, world_size=2) for r in range(2)]
    epochs = []
    for epoch in range(2):
        for loader in loaders:
            set_loader_epoch(loader, epoch)
        shards = [epoch_indices(loader) for loader in loaders]
        assert set(shards[0]) | set(shards[1]) == set(range(len(data)))
        epochs.append(shards[0])
    assert epochs[0] != epochs[1]


def test_pad_random_crop_keeps_shape():
    image = torch.arange(2 * 5 * 6, dtype=torch.uint8).reshape(2, 5, 6)
    torch.manual_seed(1)
    outputs = [PadRandomCrop(2)(image) for _ in range(20)]
    assert all(out.shape == image.shape for out in outputs)
    assert any(not torch.equal(out, image) for out in outputs)


def test_dataset_info_describes_inputs_of_any_shape():
    image = image_info("cifar10", 10, 3, 32, (0.5,) * 3, (0.25,) * 3)
    assert image.input_shape == (3, 32, 32) and image.in_channels == 3 and image.image_size == 32
    assert image.with_image_size(96).input_shape == (3, 96, 96)
    tabular = DatasetInfo("covtype", 7, (54,), (0.0,), (1.0,))
    assert tabular.in_channels == 54 and tabular.image_size is None
    spectrogram = image.with_input_shape(torch.Size([1, 40, 101]))
    assert spectrogram.input_shape == (1, 40, 101) and spectrogram.image_size is None


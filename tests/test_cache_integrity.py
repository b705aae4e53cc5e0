"""Damaged teacher caches: a replay cache's truncated, altered or torn files are named and recorded anew (with the
teacher) or refused in one line (without), never a traceback or silently used; a damaged `teacher.cache: true`
file is recomputed with a log line. Also what the replayed logits and the cached augmentation must be."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset, TensorDataset
from torchvision.transforms import Compose

from kdzoo.config import load_config
from kdzoo.core.batch import Batch
from kdzoo.data.transforms import PadRandomCrop, RandomHorizontalFlip
from kdzoo.engine.trainer import make_engine
from kdzoo.errors import ConfigError, KdzooError
from kdzoo.models.features import Features
from kdzoo.program.replay_store import ReplayCache
from kdzoo.program.teacher_cache import CACHE_FILE, read_cache, teacher_cache
from kdzoo.program.teacher_replay import ReplayTeacher
from tests.conftest import CONFIGS, FAST, run_cli

KD = CONFIGS / "digits" / "kd.yaml"
CPU = torch.device("cpu")
N, C, K = 6, 5, 2  # images, classes, top-k of the small replay caches
KEY = {"teacher": "t", "images": "i"}


def _data_span(path, name: str) -> tuple[int, int]:
    """Where tensor `name`'s bytes lie in a safetensors file."""
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    start, end = json.loads(raw[8:8 + length])[name]["data_offsets"]
    return 8 + length + start, 8 + length + end


def _replace(path, raw: bytes) -> None:
    """A new file: tensors read earlier map the old one (safetensors reads without copying)."""
    path.unlink()
    path.write_bytes(raw)


def _flip(path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    _replace(path, bytes(raw))


def _truncate(path) -> None:
    _replace(path, path.read_bytes()[:-7])


def _recorded(folder, classes=None):
    cache = ReplayCache(folder, KEY)
    cache.write_params(0, torch.rand(N, 3))
    top = torch.rand(N, C).softmax(1).topk(K, dim=1)
    cache.write_soft(0, top.values.half(), (top.indices if classes is None else classes).to(torch.int16))
    return folder


DAMAGE = {
    "truncated soft": ("soft-0.safetensors", _truncate),
    "truncated params": ("params-0.safetensors", _truncate),
    "flipped class-index bytes": ("soft-0.safetensors",
                                  lambda p: _flip(p, _data_span(p, "classes")[0] + 1)),  # high byte: out of range
    "changed values, header intact": ("soft-0.safetensors", lambda p: _flip(p, _data_span(p, "values")[0])),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_replay_epoch_without_a_teacher_is_refused_in_one_line_naming_the_file(tmp_path, kind):
    name, damage = DAMAGE[kind]
    damage(_recorded(tmp_path) / name)
    source = ReplayTeacher(ReplayCache(tmp_path, KEY), None, N, C, K, 2.0, CPU)
    with pytest.raises(ConfigError, match=f"{name} is damaged") as err:
        source.start_epoch(0)
    assert "\n" not in str(err.value) and "anew" in str(err.value)


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_replay_epoch_with_a_teacher_is_recorded_anew_with_a_log_line(tmp_path, kind):
    name, damage = DAMAGE[kind]
    damage(_recorded(tmp_path) / name)
    lines = []
    source = ReplayTeacher(ReplayCache(tmp_path, KEY), lambda x: None, N, C, K, 2.0, CPU, log=lines.append)
    assert source.start_epoch(0) == "record"
    assert len(lines) == 1 and f"{name} is damaged" in lines[0] and "recording epoch 1 anew" in lines[0]


def test_class_indices_out_of_range_are_caught_on_read_even_under_a_valid_checksum(tmp_path):
    _recorded(tmp_path, classes=torch.full((N, K), C))  # class C of 0..C-1
    source = ReplayTeacher(ReplayCache(tmp_path, KEY), None, N, C, K, 2.0, CPU)
    with pytest.raises(ConfigError, match="soft-0.safetensors is damaged \\(class indices outside 0..4\\)"):
        source.start_epoch(0)


def test_a_torn_replay_json_is_refused_in_one_line(tmp_path):
    _recorded(tmp_path)
    meta = tmp_path / "replay.json"
    meta.write_text(meta.read_text()[:20])
    with pytest.raises(ConfigError, match="replay.json is damaged") as err:
        ReplayCache(tmp_path, KEY)
    assert "\n" not in str(err.value)


def test_replayed_logits_give_back_the_stored_probabilities_at_the_temperature(tmp_path):
    cache = ReplayCache(tmp_path, KEY)
    cache.write_params(0, torch.zeros(2, 0))
    cache.write_soft(0, torch.tensor([[0.5, 0.25], [0.75, 0.125]]).half(), torch.tensor([[3, 1], [0, 4]]))
    source = ReplayTeacher(cache, None, 2, 5, 2, 4.0, CPU)
    assert source.start_epoch(0) == "replay"
    logits = source.from_batch(Batch(torch.zeros(2, 1), torch.zeros(2), index=torch.tensor([0, 1])), "x").logits
    # by hand: the top-2 as stored, the rest of the mass (0.25, then 0.125) shared by the 3 other classes
    expected = torch.tensor([[0.25 / 3, 0.25, 0.25 / 3, 0.5, 0.25 / 3],
                             [0.75, 0.125 / 3, 0.125 / 3, 0.125 / 3, 0.125]])
    assert torch.allclose(torch.softmax(logits / 4.0, dim=1), expected, atol=1e-6)


def test_a_damaged_epoch_is_recorded_anew_in_a_real_run_and_then_replays(tmp_path, digits_teacher):
    cache = tmp_path / "cache"
    common = [*FAST, "dataset.subset=120", "engine.precision=fp32", "teacher.cache=replay", "epochs=1",
              f"teacher.checkpoint={digits_teacher}", f"teacher.cache_dir={cache}"]
    make_engine(load_config(KD, common), tmp_path / "a", quiet=True).fit()
    soft = cache / "soft-0.safetensors"
    recorded = load_file(str(soft))
    _flip(soft, _data_span(soft, "values")[0])
    lines = []
    second = make_engine(load_config(KD, common), tmp_path / "b", quiet=True, log=lines.append)
    second.fit()
    assert any(f"{soft} is damaged" in line and "anew" in line for line in lines), lines
    assert second.program.models["teacher"].features.calls > 0
    assert all(torch.equal(recorded[k], v) for k, v in load_file(str(soft)).items())  # the same recording again
    assert run_cli("distill", "-c", KD, "--out", tmp_path / "c", *common) == 0
    assert json.loads((tmp_path / "c" / "metrics.jsonl").read_text().splitlines()[0])["teacher_replayed"] == 1.0


def test_a_torn_replay_json_is_one_line_at_the_cli(tmp_path, digits_teacher, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "replay.json").write_text('{"key": {"teacher": "ab')
    code = run_cli("distill", "-c", KD, "--out", tmp_path / "r", *FAST, "dataset.subset=120", "epochs=1",
                   "teacher.cache=replay", f"teacher.checkpoint={digits_teacher}", f"teacher.cache_dir={cache}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "replay.json is damaged" in err[0], err


def _cached(folder, images: Dataset, seed: int, calls: list, log=print) -> dict:
    """teacher_cache over `images` with a 'teacher' whose logits are its inputs (what it saw)."""
    key = {"teacher": "t", "images": "i", "seed": str(seed), "outputs": "logits", "pipeline": ""}

    def teacher(x):
        calls.append(len(x))
        return Features(logits=x.flatten(1).float())

    return teacher_cache(teacher, images, key, folder, seed, 4, CPU, log, progress=False)


@pytest.mark.parametrize("damage", ["truncated", "altered bytes"])
def test_a_damaged_teacher_cache_is_recomputed_with_a_log_line(tmp_path, damage):
    images, calls, lines = TensorDataset(torch.randn(8, 3), torch.zeros(8)), [], []
    first = _cached(tmp_path, images, 0, calls)
    path = tmp_path / CACHE_FILE
    _truncate(path) if damage == "truncated" else _flip(path, _data_span(path, "logits")[0] + 5)
    again = _cached(tmp_path, images, 0, calls, lines.append)
    assert sum(calls) == 16 and torch.equal(again["logits"], first["logits"])
    assert any(f"{path} is damaged" in line and "recomputing" in line for line in lines), lines
    _cached(tmp_path, images, 0, calls)
    assert sum(calls) == 16  # the recomputed file is intact: reused


def test_no_damaged_byte_or_length_of_a_teacher_cache_is_used(tmp_path):
    _cached(tmp_path, TensorDataset(torch.randn(4, 2), torch.zeros(4)), 0, [])
    path = tmp_path / CACHE_FILE
    intact = path.read_bytes()
    _, key = read_cache(path)
    damaged = [intact[:n] for n in range(len(intact))]
    damaged += [intact[:i] + bytes([intact[i] ^ 0xFF]) + intact[i + 1:] for i in range(len(intact))]
    for raw in damaged:
        _replace(path, raw)
        try:
            found = read_cache(path)
        except KdzooError:  # refused: the caller recomputes
            continue
        assert found is None or found[1] != key  # else it would be used


class _Augmented(Dataset):
    """Images under a random training augmentation (pad-crop and flip, drawn from torch's RNG)."""

    def __init__(self):
        self.images = torch.arange(8 * 36, dtype=torch.float32).view(8, 1, 6, 6)
        self.augment = Compose([PadRandomCrop(2), RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.augment(self.images[i]), 0


def test_the_cached_augmentation_follows_the_seed(tmp_path):
    torch.manual_seed(1)
    a = _cached(tmp_path / "a", _Augmented(), 0, [])["logits"]
    torch.manual_seed(2)  # another global RNG state: the cache must not depend on it
    b = _cached(tmp_path / "b", _Augmented(), 0, [])["logits"]
    c = _cached(tmp_path / "c", _Augmented(), 1, [])["logits"]
    assert torch.equal(a, b) and not torch.equal(a, c)

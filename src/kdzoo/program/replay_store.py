"""The replay cache's storage (`teacher.cache: replay`, program/teacher_replay.py): replay.json holds the key
and the epochs done; per epoch, params-<e>.safetensors (augmentation rows) and soft-<e>.safetensors (top-k soft
labels). Every file carries a SHA-256 of its tensors and the replay and epoch it belongs to; a key that differs
is refused in one line, never overwritten."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from torch import Tensor

from kdzoo.core.atomic import atomic_path
from kdzoo.errors import ConfigError
from kdzoo.program.teacher_cache import DamagedStore, read_checked, write_checked

META = "replay.json"
ORIGIN = "kdzoo_replay"  # in each file's header: the replay's key digest and the epoch (a copied file is foreign)


class ReplayCache:
    def __init__(self, folder: Path, key: dict, is_main: bool = True):
        self.folder, self.key, self.is_main = Path(folder), key, is_main
        self.digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        meta = self.folder / META
        if meta.is_file():
            found = self._read_meta()
            changed = [k for k in key if found["key"].get(k) != key[k]]
            if changed:
                raise ConfigError(f"teacher.cache: {self.folder} holds a replay of another {' and '.join(changed)}; "
                                  "give another teacher.cache_dir (or remove that folder to record anew)")
            self.done = set(found["epochs"])
        else:
            self.done = set()
            if is_main:
                self._write_meta()
        self._params: dict[int, Tensor] = {}

    def _read_meta(self) -> dict:
        meta = self.folder / META
        try:
            found = json.loads(meta.read_text())
            if isinstance(found["key"], dict) and all(isinstance(e, int) for e in found["epochs"]):
                return found
        except (OSError, ValueError, KeyError, TypeError):  # torn, not JSON, or not the replay's fields
            pass
        raise ConfigError(f"teacher.cache: {meta} is damaged (not the replay's key and epochs); restore it, or remove "
                          f"it to record the replay in {self.folder} anew")

    def _write_meta(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / META
        if meta.is_file():  # another run sharing the folder may have finished epochs meanwhile: keep them
            self.done |= set(self._read_meta()["epochs"])
        with atomic_path(meta) as tmp:
            Path(tmp).write_text(json.dumps({"key": self.key, "epochs": sorted(self.done)}, indent=1))

    def complete(self, epoch: int) -> bool:
        return epoch in self.done

    def _path(self, kind: str, epoch: int) -> Path:
        return self.folder / f"{kind}-{epoch}.safetensors"

    def _read(self, kind: str, epoch: int) -> dict[str, Tensor]:
        path = self._path(kind, epoch)
        tensors, metadata = read_checked(path)
        if metadata.get(ORIGIN) != f"{self.digest}:{epoch}":
            raise DamagedStore(path, f"not written for epoch {epoch + 1} of this replay")
        return tensors

    def _write(self, kind: str, epoch: int, tensors: dict[str, Tensor]) -> None:
        write_checked(self._path(kind, epoch), tensors, {ORIGIN: f"{self.digest}:{epoch}"})

    def params(self, epoch: int) -> Tensor | None:
        """The augmentation rows of `epoch`, or None (memoised per process: workers read them once an epoch);
        DamagedStore if the file cannot be trusted."""
        if epoch not in self._params:
            if not self._path("params", epoch).is_file():
                return None
            self._params = {epoch: self._read("params", epoch)["params"]}
        return self._params[epoch]

    def write_params(self, epoch: int, table: Tensor) -> None:
        if self.is_main:
            self._write("params", epoch, {"params": table})
        self.remember(epoch, table)

    def remember(self, epoch: int, table: Tensor) -> None:
        """Hold `epoch`'s rows in this process without writing them (a worker's draw before rank 0 wrote)."""
        self._params = {epoch: table}

    def recording(self, epoch: int, n: int, k: int, num_classes: int) -> tuple[Tensor, Tensor]:
        """A complete epoch's soft labels (values, classes), its rows and labels checked (checksums, shapes,
        class range); DamagedStore naming the first file that cannot be replayed."""
        params = self.params(epoch)
        if params is None or params.dim() != 2 or len(params) != n:
            raise DamagedStore(self._path("params", epoch), "missing" if params is None else f"not {n} rows")
        path, soft = self._path("soft", epoch), self._read("soft", epoch)
        values, classes = soft.get("values"), soft.get("classes")
        if values is None or classes is None or values.shape != (n, k) or classes.shape != (n, k):
            raise DamagedStore(path, f"not the top-{k} soft labels of {n} images")
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
            raise DamagedStore(path, f"class indices outside 0..{num_classes - 1}")
        return values, classes

    def write_soft(self, epoch: int, values: Tensor, classes: Tensor) -> None:
        if self.is_main:
            self._write("soft", epoch, {"values": values, "classes": classes})
            self.done.add(epoch)
            self._write_meta()
        else:
            self.done.add(epoch)

    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.folder.glob("*.safetensors")) / 2 ** 20

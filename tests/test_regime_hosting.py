"""A method the regime cannot host is refused when the program is built, in one line (exit 2), before a step
runs: grouped batches (CKD, mixup rows) and init stages (AB, FT, FSP) exist in the offline regime only."""
from __future__ import annotations

import pytest

from tests.conftest import CONFIGS, FAST, run_cli

DML = CONFIGS / "digits" / "mutual" / "dml.yaml"
DSSRD = CONFIGS / "digits" / "dssrd" / "dssrd.yaml"


@pytest.mark.parametrize("recipe, loss, expected", [
    (DML, "{ckd_cls: 1.0, ckd_rel: 1.0}", "which the mutual regime does not build"),
    (DML, "{ce: 1.0, mixup_cls: 1.0}", "which the mutual regime does not build"),
    (DML, "{ce: 1.0, ab: 1.0}", "init stage before the main phase, which the mutual regime does not run"),
    (DSSRD, "{ce: 1.0, ft: 1.0, strong.mixup_ce: 1.0}", "which the double_student regime does not run"),
    (DSSRD, "{ckd_cls: 1.0, ckd_rel: 1.0, strong.mixup_ce: 1.0}", "which the double_student regime does not build"),
])
def test_unhostable_methods_are_refused_at_build_time(tmp_path, capsys, digits_teacher, recipe, loss, expected):
    out = tmp_path / "run"
    code = run_cli("train", "-c", recipe, "--out", out, "epochs=1", f"loss={loss}", "methods={}",
                   f"teacher.checkpoint={digits_teacher}" if recipe == DSSRD else "dataset.subset=100", *FAST)
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1, err
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()

"""The architecture is enforced: import-linter's contracts (pyproject.toml) hold, and they can fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.import_contracts import _package, _private_imports

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout and "The engine never imports the studio" in proc.stdout


def test_a_private_name_imported_across_packages_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "demo"
    (pkg / "train").mkdir(parents=True)
    (pkg / "cli").mkdir()
    for d in (pkg, pkg / "train", pkg / "cli"):
        (d / "__init__.py").write_text("")
    (pkg / "train" / "loop.py").write_text("def _swap_in(): ...\ndef public(): ...\n")
    (pkg / "train" / "stepper.py").write_text("from demo.train.loop import _swap_in\nfrom .loop import public\n")
    (pkg / "cli" / "compile.py").write_text("from demo.train.loop import (\n    public,\n    _swap_in,\n)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _package("demo.train.loop") == "demo.train" and _package("demo.train") == "demo.train"
    # the same package may share private helpers; another package may not
    assert [(i, n) for _, i, n in _private_imports("demo.train.stepper")] == [("demo.train.loop", "_swap_in")]
    found = _private_imports("demo.cli.compile")
    assert found == [(1, "demo.train.loop", "_swap_in")]
    assert _package(found[0][1]) != _package("demo.cli.compile")

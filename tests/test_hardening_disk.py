"""A full disk during `datasets export` or generation (simulated with RLIMIT_FSIZE in a subprocess):
one line, no left-over .part file, the store intact."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from engine.store import Store, data_dir

ROOT = Path(__file__).resolve().parent.parent
TRAVEL = ROOT / "sample_flows" / "travel.yaml"


def _limited(args: list[str], max_file_bytes: int) -> subprocess.CompletedProcess[str]:
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes}, {max_file_bytes})); "
            "from engine.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


def _conversations() -> int:
    con = sqlite3.connect(data_dir() / "subterra.db")
    try:
        assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
        return int(con.execute("select count(*) from conversations").fetchone()[0])
    finally:
        con.close()


def test_full_disk_during_export(subterra_home: Path, tmp_path: Path) -> None:
    from engine.cli import main

    assert main(["generate", str(TRAVEL), "-n", "20", "-q"]) == 0
    out = tmp_path / "export.jsonl"
    out.write_text("the previous export\n")
    r = _limited(["datasets", "export", "travel", str(out)], 3000)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write") and "File too large" in lines[0], r.stderr
    assert not out.with_name(out.name + ".part").exists()
    assert out.read_text() == "the previous export\n"
    assert _conversations() == 20


def test_full_disk_during_generation(subterra_home: Path) -> None:
    Store()
    db = data_dir() / "subterra.db"
    r = _limited(["generate", str(TRAVEL), "-n", "400", "-q"], db.stat().st_size + 40_000)
    assert r.returncode == 1, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and lines[-1].startswith("error: the disk is full"), r.stderr[-3000:]
    assert 0 <= _conversations() < 400  # what was written before is intact and resumable
    assert not list(data_dir().rglob("*.part"))

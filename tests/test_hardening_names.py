"""Names that become paths: one safe-name rule where flow, dataset and model names enter; bundle import
refuses links and bad provenance and leaves nothing half-copied; older stored names still open."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from engine import editing
from engine.errors import StoreError, TrainingError
from engine.flow import NAME_RULE
from engine.store import Store, data_dir

HOSTILE = ["../../escaped", "/tmp/abs", "a/b", "a b", "", ".hidden", "x" * 65, "name\n"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_flow_names_are_refused_where_they_enter(store: Store, name: str) -> None:
    with pytest.raises(StoreError, match="cannot be used as a name: use letters, digits"):
        store.create_flow(editing.new_flow("ok").model_copy(update={"name": name}))
    with pytest.raises(StoreError, match="cannot be used as a name"):
        store.save_flow(editing.new_flow("ok").model_copy(update={"name": name}))
    store.create_flow(editing.new_flow("fine"))
    with pytest.raises(StoreError, match=NAME_RULE.split(",")[0]):
        store.rename_flow("fine", name)
    with pytest.raises(StoreError, match="cannot be used as a name"):
        store.duplicate_flow("fine", name)
    with pytest.raises(StoreError, match="(?s)dataset .* cannot be used as a name"):
        store.create_dataset(name, "fine", 1, {}, {})
    store.delete_flow("fine")


def test_model_names_are_checked(tmp_path: Path) -> None:
    from engine.train.config import TrainConfig

    with pytest.raises(ValueError, match="cannot be used as a name"):
        TrainConfig(out=str(tmp_path / "x"), name="../../outside")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    from engine.registry import register_model

    with pytest.raises(StoreError, match="model '../x' cannot be used as a name"):
        register_model("../x", tmp_path / "m")


def test_compile_of_a_flow_named_like_a_path_writes_nothing_outside(tmp_path: Path, capsys, subterra_home) -> None:
    from engine.cli import main

    flow = editing.new_flow("x").model_dump(mode="json") | {"name": "../../pwned"}
    f = tmp_path / "evil.json"
    f.write_text(json.dumps(flow))
    before = set(tmp_path.parent.iterdir())
    code = main(["compile", str(f), "--data", str(f)])
    err = capsys.readouterr().err
    assert code != 0 and "cannot be used as a name" in err and "Traceback" not in err
    assert set(tmp_path.parent.iterdir()) == before and not (data_dir().parent / "pwned").exists()


def test_a_legacy_stored_name_still_opens_and_can_be_renamed(store: Store) -> None:
    flow = editing.new_flow("legacy")
    store.create_flow(flow)
    store.db.execute("update flows set name = ? where name = ?", ["old name with spaces", "legacy"])
    store.db.conn.commit()
    got = store.get_flow("old name with spaces")
    assert got.name == "old name with spaces"
    store.save_flow(got.model_copy(update={"description": "edited"}))  # a stored flow keeps being editable
    store.rename_flow("old name with spaces", "renamed")
    assert store.get_flow("renamed").description == "edited"


def test_concurrent_creates_of_one_name_let_exactly_one_win(subterra_home: Path) -> None:
    Store()
    barrier = threading.Barrier(6)
    results: list[str] = []

    def create(i: int) -> None:
        st = Store(seed=False)
        barrier.wait()
        try:
            st.create_flow(editing.new_flow("race").model_copy(update={"description": str(i)}))
            results.append("ok")
        except StoreError as e:
            results.append(str(e))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1
    assert all("already exists" in r for r in results if r != "ok")
    assert Store(seed=False).flow_version("race") == 1


# -- bundle import ---------------------------------------------------------------------------------------
def _model_dir(root: Path, prov: object = None) -> Path:
    d = root / "output"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\0" * 16)
    if prov is not None:
        (d / "subterra.json").write_text(prov if isinstance(prov, str) else json.dumps(prov))
    return d


def _models() -> list[str]:
    m = data_dir() / "models"
    return sorted(p.name for p in m.iterdir()) if m.exists() else []


@pytest.mark.parametrize("prov, message", [
    ({"flow": "../../../etc"}, "model '../../../etc' cannot be used as a name"),
    ({"config": {"name": "/abs/path"}}, "model '/abs/path' cannot be used as a name"),
    ("not json", "not valid JSON"),
    ([1, 2], "is not valid provenance: the file must hold a JSON object"),
    ({"flow": "ok", "flow_version": "three"}, "'flow_version' must be int"),
])
def test_bundle_import_validates_provenance(tmp_path: Path, subterra_home: Path, prov: object, message: str) -> None:
    from engine.train.bundle import import_model

    with pytest.raises(TrainingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_model(_model_dir(tmp_path, prov))
    assert _models() == []


def test_bundle_import_refuses_links(tmp_path: Path, subterra_home: Path) -> None:
    from engine.train.bundle import import_model

    secret = tmp_path / "secret.txt"
    secret.write_text("private key")
    d = _model_dir(tmp_path, {"flow": "travel"})
    os.symlink(secret, d / "tokenizer.json")
    with pytest.raises(TrainingError, match="tokenizer.json is a link"):
        import_model(d)
    assert _models() == []


def test_bundle_import_leaves_nothing_half_copied(tmp_path: Path, subterra_home: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from engine.train import bundle

    d = _model_dir(tmp_path, {"flow": "travel"})
    (d / "big.bin").write_bytes(b"1" * 100)
    real = shutil.copyfile

    def failing(src, dst, **kw):
        if str(src).endswith("big.bin"):
            raise OSError(28, "No space left on device")
        return real(src, dst, **kw)

    monkeypatch.setattr(bundle.shutil, "copyfile", failing)
    with pytest.raises(OSError):
        bundle.import_model(d)
    assert _models() == []
    monkeypatch.setattr(bundle.shutil, "copyfile", real)
    entry = bundle.import_model(d)
    assert entry.name == "travel" and _models() == ["travel"]
    assert sorted(p.name for p in (data_dir() / "models" / "travel").iterdir()) == \
        ["big.bin", "config.json", "model.safetensors", "subterra.json"]

"""The compile panel's "Ray cluster" target through NiceGUI's simulated user: its fields come from
`RayTarget` (the CLI's flags) and appear only for that target; an address nobody listens on gives the
engine's one-line error as a notification and no job. No Ray cluster is started (see test_ray_compile.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nicegui.testing.user import User

from engine.fields import field_spec
from engine.generate import GenerateConfig, agenerate_dataset
from engine.jobs import list_jobs
from engine.store import Store
from engine.train.ray_target import RayTarget
from ui.components.flow_canvas import assets_built

RAY_FIELDS = ("address", "workers", "gpus_per_worker", "storage")

pytestmark = pytest.mark.skipif(not assets_built(), reason="canvas assets not built; run `make ui-assets`")


@pytest.fixture(autouse=True)
def no_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the panel would prefill a cluster this machine has not got


def element(user: User, marker: str):  # type: ignore[no-untyped-def]
    return next(iter(user.find(marker=marker).elements))


async def test_ray_target_shows_ray_target_fields_with_their_defaults(user: User) -> None:
    await user.open("/flow/travel?panel=compile")
    await user.should_see(marker="compile-panel")
    assert element(user, "compile-target").value == "local"
    for name in RAY_FIELDS:
        await user.should_not_see(marker=f"compile-ray-{name}")
    element(user, "compile-target").value = "ray"
    for name in RAY_FIELDS:
        await user.should_see(marker=f"compile-ray-{name}")
        el = element(user, f"compile-ray-{name}")
        default = field_spec(RayTarget, name).default
        assert el.value == ("" if default is None else default), name
    assert element(user, "compile-ray-workers").value == RayTarget().workers
    assert element(user, "compile-ray-gpus_per_worker").value == RayTarget().gpus_per_worker
    await user.should_not_see(marker="compile-bundle-dest")
    element(user, "compile-target").value = "local"
    await user.should_not_see(marker="compile-ray-address")


async def test_ray_address_defaults_to_the_environment(user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "http://10.1.2.3:8265")
    await user.open("/flow/travel?panel=compile")
    element(user, "compile-target").value = "ray"
    assert element(user, "compile-ray-address").value == "http://10.1.2.3:8265"


async def test_unreachable_ray_address_is_one_line_and_no_job(user: User, tiny_model_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from ui.pages import compile_panel

    seen: list[RayTarget] = []

    def submit(cfg, target):  # type: ignore[no-untyped-def]  # the real one, watching what the panel passes
        seen.append(target)
        return real(cfg, target)

    real = compile_panel.submit_ray_compile
    monkeypatch.setattr(compile_panel, "submit_ray_compile", submit)
    store = Store()
    await agenerate_dataset(store.get_flow("travel"), GenerateConfig(n=6, dataset="travel-v1"), store)
    await user.open("/flow/travel?panel=compile")
    await user.should_see(marker="compile-panel")
    element(user, "compile-base").value = str(tiny_model_dir)
    element(user, "compile-target").value = "ray"
    element(user, "compile-ray-address").value = "http://127.0.0.1:1"
    element(user, "compile-ray-workers").value = 3
    user.find(marker="compile-start").click()
    await user.should_see("cannot reach a Ray cluster at http://127.0.0.1:1", retries=100)
    message = next(m for m in user.notify.messages if "cannot reach" in m)
    assert "\n" not in message and "Traceback" not in message, message
    assert "--ray-address" in message  # says what to do
    assert seen == [RayTarget(address="http://127.0.0.1:1", workers=3)]  # as the CLI builds it
    assert list_jobs(kind="compile") == []


async def test_a_bad_worker_count_names_the_field(user: User) -> None:
    store = Store()
    await agenerate_dataset(store.get_flow("travel"), GenerateConfig(n=6, dataset="travel-v1"), store)
    await user.open("/flow/travel?panel=compile")
    await user.should_see(marker="compile-panel")
    element(user, "compile-target").value = "ray"
    element(user, "compile-ray-address").value = "http://127.0.0.1:1"
    element(user, "compile-ray-workers").value = 0
    user.find(marker="compile-start").click()
    await user.should_see("Check the form: Workers:", retries=50)
    assert list_jobs(kind="compile") == []

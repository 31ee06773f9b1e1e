"""The studio seen from another web page: foreign Host (DNS rebinding), cross-origin websockets and
requests, and uploads far over the limit are refused by its front door (ui/guard.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from ui.guard import StudioGuard

ROOT = Path(__file__).resolve().parent.parent


def _app(**guard: object) -> TestClient:
    received: list[int] = []

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("flows")

    async def upload(request: Request) -> PlainTextResponse:
        body = await request.body()
        received.append(len(body))
        return PlainTextResponse("ok")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    app = Starlette(routes=[Route("/", page), Route("/_nicegui/client/c/upload/u", upload, methods=["POST"]),
                            WebSocketRoute("/_nicegui_ws/socket.io/", ws)])
    client = TestClient(StudioGuard(app, **guard), base_url="http://127.0.0.1:8080")  # type: ignore[arg-type]
    client.received = received  # type: ignore[attr-defined]
    return client


def test_foreign_host_is_refused() -> None:
    c = _app(bound_host="127.0.0.1")
    assert c.get("/").text == "flows"
    assert c.get("/", headers={"host": "localhost:8080"}).status_code == 200
    r = c.get("/", headers={"host": "rebind.attacker.example:8080"})
    assert r.status_code == 403 and "Host 'rebind.attacker.example' is not allowed" in r.text
    assert "--allow-host" in r.text
    allowed = _app(bound_host="0.0.0.0", allow_hosts=("studio.lan",))
    assert allowed.get("/", headers={"host": "studio.lan:8080"}).status_code == 200
    assert allowed.get("/", headers={"host": "other.lan:8080"}).status_code == 403


def test_cross_origin_websocket_is_refused() -> None:
    c = _app()
    with c.websocket_connect("/_nicegui_ws/socket.io/", headers={"origin": "http://127.0.0.1:8080",
                                                                  "host": "127.0.0.1:8080"}) as ws:
        assert ws.receive_text() == "hello"
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
        with pytest.raises(WebSocketDisconnect) as e:
            with c.websocket_connect("/_nicegui_ws/socket.io/", headers={"origin": origin, "host": "127.0.0.1:8080"}):
                pass
        assert e.value.code == 1008
    r = c.post("/_nicegui/client/c/upload/u", content=b"x", headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "another site" in r.text


def test_upload_over_the_limit_is_refused_before_it_is_read() -> None:
    c = _app(max_upload=1000)
    assert c.post("/_nicegui/client/c/upload/u", content=b"x" * 900).text == "ok"
    r = c.post("/_nicegui/client/c/upload/u", content=b"x" * 30_000_000)
    assert r.status_code == 413 and "over the limit of 1000 bytes" in r.text
    assert c.received == [900]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_the_real_studio_refuses_foreign_host_and_origin(tmp_path: Path) -> None:
    from engine.serve.vllm import free_port

    port = free_port()
    # without PYTEST_CURRENT_TEST: NiceGUI would take the server for its own screen test and ignore --port
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "studio", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            try:
                if httpx.get(base + "/", timeout=5, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "studio did not start"
            time.sleep(0.5)
        assert httpx.get(base + "/", headers={"host": "evil.example"}, trust_env=False).status_code == 403
        sio = base + "/_nicegui_ws/socket.io/?EIO=4&transport=polling"
        assert httpx.get(sio, headers={"origin": base}, trust_env=False).status_code == 200
        r = httpx.get(sio, headers={"origin": "http://evil.example"}, trust_env=False)
        assert r.status_code == 403
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

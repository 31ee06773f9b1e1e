"""Hardening of the OpenAI-compatible server: the front door (Host, API key, content type, body size),
requests checked whole before any work (non-finite numbers, seeds, nesting, max_tokens against the
context), cancellation when the client goes away, fairness between requests, and a clean exit on
Ctrl-C/SIGTERM even in the middle of a long generation."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from engine.serve.guard import host_allowed, host_name
from engine.serve.server import ServerThread
from engine.serve.vllm import free_port

ROOT = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"
HELLO = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def srv(tiny_model_dir: Path):
    with ServerThread(str(tiny_model_dir), served_name="tiny", allow_hosts=("studio.internal",),
                      max_body=200_000) as s:
        yield s


@pytest.fixture(scope="module")
def keyed(tiny_model_dir: Path):
    with ServerThread(str(tiny_model_dir), served_name="tiny", api_key="s3cret") as s:
        yield s


def _url(s: ServerThread, path: str = CHAT) -> str:
    return f"http://127.0.0.1:{s.port}{path}"


def _post(s: ServerThread, body: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
    h = {"content-type": "application/json", **(headers or {})}
    return httpx.post(_url(s), content=body, headers=h, timeout=30, trust_env=False)


def test_host_names() -> None:
    assert host_name("[::1]:8000") == "::1" and host_name("Example.COM:80") == "example.com"
    assert host_allowed("localhost:1", []) and host_allowed("127.0.0.5", []) and host_allowed("[::1]:9", [])
    assert not host_allowed("evil.example:8000", []) and not host_allowed("", [])
    assert host_allowed("evil.example:8000", ["evil.example"])


def test_foreign_host_is_refused(srv: ServerThread) -> None:
    r = _post(srv, json.dumps(HELLO), {"host": "attacker.example"})
    assert r.status_code == 403
    assert "Host 'attacker.example' is not allowed" in r.json()["error"]["message"]
    assert "--allow-host" in r.json()["error"]["message"]
    r = httpx.get(_url(srv, "/v1/models"), headers={"host": "attacker.example:80"}, trust_env=False)
    assert r.status_code == 403
    assert _post(srv, json.dumps(HELLO), {"host": "studio.internal:8000"}).status_code == 200
    assert _post(srv, json.dumps(HELLO), {"host": f"localhost:{srv.port}"}).status_code == 200


def test_api_key_is_required_when_set(keyed: ServerThread) -> None:
    r = _post(keyed, json.dumps(HELLO))
    assert r.status_code == 401 and "Authorization: Bearer KEY" in r.json()["error"]["message"]
    assert _post(keyed, json.dumps(HELLO), {"authorization": "Bearer wrong"}).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.base_url, api_key="nope", max_retries=0).models.list()
    client = openai.OpenAI(base_url=keyed.base_url, api_key="s3cret", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(_url(keyed, "/health"), trust_env=False).status_code == 200  # liveness needs no key


def test_content_type_must_be_json(srv: ServerThread) -> None:
    r = httpx.post(_url(srv), content=json.dumps(HELLO), headers={"content-type": "text/plain"}, trust_env=False)
    assert r.status_code == 415 and "Content-Type must be application/json" in r.json()["error"]["message"]


def test_body_size_is_capped(srv: ServerThread) -> None:
    big = json.dumps({**HELLO, "messages": [{"role": "user", "content": "x" * 300_000}]})
    r = _post(srv, big)
    assert r.status_code == 413 and "over the limit of 200000 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b" " * 10_000

    r = httpx.post(_url(srv), content=chunks(), headers={"content-type": "application/json"}, trust_env=False)
    assert r.status_code == 413


@pytest.mark.parametrize("body, message", [
    ('{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "contains NaN"),
    ('{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', "contains Infinity"),
    ('{"messages": [{"role": "user", "content": "hi"}], "seed": 99999999999999999999999}', "seed"),
    ('{"messages": [{"role": "user", "content": [' + "[" * 50_000 + "]" * 50_000 + ']}]}', "nested too deeply"),
    ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000000000}', "maximum context length is 8192"),
])
def test_hostile_numbers_are_refused_before_any_work(srv: ServerThread, body: str, message: str) -> None:
    t0 = time.monotonic()
    r = _post(srv, body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    assert time.monotonic() - t0 < 5


def test_max_tokens_default_fits_the_context(tiny_model_dir: Path) -> None:
    from engine.backends.base import ChatRequest, Message, Sampling
    from engine.backends.local import LocalBackend
    from engine.errors import ServingError
    from engine.serve.server import fit_context

    backend = LocalBackend(str(tiny_model_dir))
    chat = ChatRequest(messages=[Message(role="user", content="word " * 8000)], sampling=Sampling(max_tokens=512))
    prompt = len(backend.render_prompt(chat))
    fitted = fit_context(backend, chat, None)  # the 512-token default would not fit: lowered to the room left
    assert fitted.sampling.max_tokens == 8192 - prompt
    with pytest.raises(ServingError, match=f"the messages take {prompt} and max_tokens asks for 512"):
        fit_context(backend, chat, 512)


def _lock_idle(model_dir: Path) -> bool:
    from engine.backends.local import _MODELS

    lock = next(v.lock for k, v in _MODELS.items() if k[0] == str(model_dir.resolve()))
    return lock._serving == lock._next


def _raw_request(port: int, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


@pytest.mark.parametrize("stream", [False, True])
def test_a_generation_whose_client_left_is_cancelled(srv: ServerThread, tiny_model_dir: Path, stream: bool) -> None:
    long = {"messages": [{"role": "user", "content": "tell me everything"}], "max_tokens": 2000,
            "temperature": 1.0, "seed": 1, "stream": stream}
    s = _raw_request(srv.port, long)
    time.sleep(1.0)
    assert not _lock_idle(tiny_model_dir)  # generating
    s.close()
    deadline = time.monotonic() + 5
    while not _lock_idle(tiny_model_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _lock_idle(tiny_model_dir), "the generation kept running after its client went away"


def test_one_long_request_does_not_starve_the_others(srv: ServerThread, tiny_model_dir: Path) -> None:
    long = {"messages": [{"role": "user", "content": "tell me everything"}], "max_tokens": 2000,
            "temperature": 1.0, "seed": 2}
    s = _raw_request(srv.port, long)
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        r = _post(srv, json.dumps({**HELLO, "max_tokens": 3}))
        took = time.monotonic() - t0
        assert r.status_code == 200
        assert not _lock_idle(tiny_model_dir)  # the long one is still going: the short one did not wait for it
        assert took < 5
    finally:
        s.close()


def test_seeded_reply_is_the_same_when_interleaved(srv: ServerThread) -> None:
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 40, "temperature": 1.0, "seed": 7}
    alone = _post(srv, json.dumps(body)).json()["choices"][0]["message"]["content"]
    other = {"messages": [{"role": "user", "content": "tell me"}], "max_tokens": 300, "temperature": 1.0, "seed": 3}
    t = threading.Thread(target=_post, args=(srv, json.dumps(other)))
    t.start()
    time.sleep(0.2)
    again = _post(srv, json.dumps(body)).json()["choices"][0]["message"]["content"]
    t.join()
    assert again == alone


# -- the CLI: Ctrl-C and SIGTERM stop it with exit 0, even during a long generation --------------------
def _start_cli(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "engine", "serve", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait_ready(proc: subprocess.Popen[str], url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("server not ready")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serve_stops_cleanly_during_a_long_generation(tiny_model_dir: Path, sig: int) -> None:
    port = free_port()
    proc = _start_cli([str(tiny_model_dir), "--port", str(port), "--api-key", "k"])
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/health")
        s = socket.create_connection(("127.0.0.1", port))
        data = json.dumps({"messages": [{"role": "user", "content": "go"}], "max_tokens": 2000, "seed": 1}).encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer k\r\n"
                  b"Content-Type: application/json\r\n" + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        time.sleep(1.0)
        t0 = time.monotonic()
        os.killpg(proc.pid, sig)
        s.settimeout(10)
        answer = s.recv(100)  # the running reply is cut short at once, not after 2000 tokens
        took = time.monotonic() - t0
        s.close()
        code = proc.wait(timeout=60)  # then the process exits (torch's own teardown takes a few seconds)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, proc.stderr.read()[-2000:]
    assert answer.startswith(b"HTTP/1.1 200") and took < 3, f"{answer!r} after {took:.1f} s"


# -- a managed vLLM behind the same front door ----------------------------------------------------------
def _vllm_available() -> bool:
    from engine.errors import ServingError
    from engine.serve.vllm import find_vllm_python

    try:
        find_vllm_python()
        return True
    except ServingError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _vllm_available(), reason="vLLM is not installed here; `make vllm-env` builds it")
def test_vllm_behind_the_front_door_then_sigterm_exits_0(smollm2_tokenizer_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    model = tmp_path / "compiled-tiny"
    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                                 max_position_embeddings=2048, tie_word_embeddings=True,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(model, safe_serialization=True)
    tok.save_pretrained(model)
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", SUBTERRA_API_KEY="vkey")
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", str(model), "--engine", "vllm", "--port",
                             str(port), "--max-model-len", "512", "--allow-host", "gateway.internal"],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    auth = {"authorization": "Bearer vkey"}
    try:
        deadline = time.monotonic() + 900
        while True:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            try:
                if httpx.get(base + "/v1/models", headers=auth, timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "vLLM not ready"
            time.sleep(1)
        body = json.dumps({"model": "compiled-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        post = lambda h: httpx.post(base + CHAT, content=body, headers={"content-type": "application/json", **h},  # noqa: E731
                                    timeout=60, trust_env=False)
        assert post({}).status_code == 401  # the key was passed on to vLLM
        assert post({**auth, "host": "attacker.example"}).status_code == 403
        assert post({**auth, "host": "gateway.internal"}).status_code == 200
        assert httpx.post(base + CHAT, content=body, headers={**auth, "content-type": "text/plain"},
                          trust_env=False).status_code == 415
        assert post(auth).status_code == 200
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, proc.stderr.read()[-3000:]
    with pytest.raises(httpx.HTTPError):  # vLLM stopped with it
        httpx.get(base + "/v1/models", timeout=2, trust_env=False)

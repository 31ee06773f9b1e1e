"""`subterra serve` on both engines, driven by the official `openai` client over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from engine.backends.base import ChatRequest, Message, Sampling
from engine.errors import ServingError
from engine.serve.server import ServerThread
from engine.serve.vllm import VLLMServer, batch_chat, find_vllm_python, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compiled_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("serve") / "compiled-travel"
    shutil.copytree(tiny_model_dir, d)
    (d / "subterra.json").write_text(json.dumps({"flow": "travel", "flow_version": 1,
                                                 "system_prompt": "You are a helpful travel booking assistant."}))
    return d


@pytest.fixture(scope="module")
def server(compiled_dir: Path):
    with ServerThread(str(compiled_dir)) as srv:
        yield srv


def _client(srv: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)


def test_models_lists_the_served_model(server: ServerThread) -> None:
    models = _client(server).models.list().data
    assert [m.id for m in models] == ["compiled-travel"]


def test_chat_completion(server: ServerThread) -> None:
    r = _client(server).chat.completions.create(
        model="compiled-travel", max_tokens=8, temperature=0,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello"}])
    assert r.object == "chat.completion" and r.model == "compiled-travel"
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_matches_the_plain_reply(server: ServerThread) -> None:
    client = _client(server)
    msgs = [{"role": "user", "content": "Book me a trip to Kyoto"}]
    plain = client.chat.completions.create(model="compiled-travel", messages=msgs, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model="compiled-travel", messages=msgs, max_tokens=10,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == plain.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # really streamed
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_errors_come_back_in_openai_shape(server: ServerThread) -> None:
    client = _client(server)
    with pytest.raises(openai.NotFoundError, match="does not exist; this server serves 'compiled-travel'"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="compiled-travel", messages=[])
    with pytest.raises(openai.BadRequestError, match="role 'tool' are not supported"):
        client.chat.completions.create(model="compiled-travel", messages=[
            {"role": "user", "content": "hi"}, {"role": "tool", "content": "x", "tool_call_id": "1"}])


def test_compiled_agent_through_the_server(server: ServerThread, compiled_dir: Path) -> None:
    from engine.agents import load_agent

    agent = load_agent(f"compiled:{compiled_dir}", base_url=server.base_url, served_model="compiled-travel",
                       temperature=1.0, seed=1, max_tokens=6)  # sampled: a random model's greedy reply may be blank

    async def go():
        r = await agent.session().reply([Message(role="user", content="hi")])
        await agent.aclose()
        return r

    r = asyncio.run(go())
    assert r.usage.output_tokens > 0 and r.calls == 1


# -- the CLI, transformers engine ------------------------------------------------------------------------
def _start_cli(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "engine", "serve", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait_ready(proc: subprocess.Popen[str], url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"server not ready within {timeout} s")


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> int:
    os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def test_cli_serve_transformers(compiled_dir: Path) -> None:
    port = free_port()
    proc = _start_cli([str(compiled_dir), "--port", str(port), "--engine", "transformers", "--name", "travel-agent"])
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/v1/models", 180)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["travel-agent"]
        stream = client.chat.completions.create(model="travel-agent", stream=True, max_tokens=5,
                                                messages=[{"role": "user", "content": "hello"}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        _stop(proc)
    assert "serving travel-agent at http://127.0.0.1:" in proc.stderr.read()


def test_cli_serve_warns_on_a_public_address(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli.agents import warn_if_public

    warn_if_public("127.0.0.1")
    warn_if_public("localhost")
    assert capsys.readouterr().err == ""
    warn_if_public("0.0.0.0")
    assert "warning: binding 0.0.0.0 exposes the model" in capsys.readouterr().err


def test_cli_serve_rejects_a_non_model_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["serve", str(tmp_path)]) == 1
    assert f"error: {tmp_path} is not a model directory (no config.json)" in capsys.readouterr().err


def test_vllm_not_installed_is_a_clear_error(compiled_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    monkeypatch.setenv("SUBTERRA_VLLM", "/nonexistent/bin/vllm")
    assert main(["serve", str(compiled_dir), "--engine", "vllm"]) == 1
    err = capsys.readouterr().err
    assert ("error: SUBTERRA_VLLM=/nonexistent/bin/vllm does not exist. "
            "vLLM is not installed: run `make vllm-env`") in err


# -- vLLM (CPU build, its own venv) ---------------------------------------------------------------------
def _vllm_available() -> bool:
    try:
        find_vllm_python()
        return True
    except ServingError:
        return False


@pytest.fixture(scope="module")
def vllm_model_dir(smollm2_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a head size vLLM's CPU attention kernels support (64)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("vllm") / "compiled-tiny"
    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "subterra.json").write_text(json.dumps({"flow": "travel", "flow_version": 1,
                                                   "system_prompt": "You are a helpful travel booking assistant."}))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not _vllm_available(), reason="vLLM is not installed here; `make vllm-env` builds it")
def test_cli_serve_vllm(vllm_model_dir: Path) -> None:
    """`subterra serve --engine vllm`: the openai client (plain, streaming, batched), then a clean stop."""
    port = free_port()
    proc = _start_cli([str(vllm_model_dir), "--engine", "vllm", "--port", str(port), "--max-model-len", "1024"])
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/v1/models", 900)
        # the CLI says it is serving once its own readiness check passes (it may lag ours by a poll)
        said = [proc.stderr.readline() for _ in range(2)]  # type: ignore[union-attr]
        assert said[0].startswith("starting vLLM on ") and "serving compiled-tiny at http://127.0.0.1:" in said[1], said
        base = f"http://127.0.0.1:{port}/v1"
        client = openai.OpenAI(base_url=base, api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["compiled-tiny"]
        r = client.chat.completions.create(model="compiled-tiny", max_tokens=6, temperature=0,
                                           messages=[{"role": "user", "content": "hi"}])
        assert r.usage.completion_tokens > 0
        chunks = list(client.chat.completions.create(model="compiled-tiny", max_tokens=6, temperature=0, stream=True,
                                                     messages=[{"role": "user", "content": "hi"}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
        requests = [ChatRequest(system="You are terse.", messages=[Message(role="user", content=f"question {i}")],
                                sampling=Sampling(temperature=1.0, seed=i, max_tokens=8))  # sampled: a random
                    for i in range(8)]  # model's greedy reply can be blank, which the backend rejects
        results = asyncio.run(batch_chat(base, requests, model="compiled-tiny", concurrency=8))
        assert len(results) == 8 and all(x.usage.output_tokens > 0 for x in results)
    finally:
        code = _stop(proc)
    assert code == 0, proc.stderr.read()[-2000:]
    with pytest.raises(httpx.HTTPError):  # vLLM is gone with it
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)


@pytest.mark.slow
@pytest.mark.skipif(not _vllm_available(), reason="vLLM is not installed here; `make vllm-env` builds it")
def test_vllm_startup_failure_reports_the_log(tmp_path: Path) -> None:
    bad = tmp_path / "broken-model"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ServingError, match=r"vLLM exited with code \d+ before it was ready; its log"):
        VLLMServer(bad, startup_timeout=600).start()

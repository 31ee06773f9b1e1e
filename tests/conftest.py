"""Shared fixtures. Every test gets its own data dir (a real SQLite file in a temp folder);
converted base models are cached once per checkout in `.pytest_cache/subterra-models`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_CACHE = ROOT / ".pytest_cache" / "subterra-models"
ARTIFACTS = ROOT / "test-artifacts"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(autouse=True)
def subterra_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "subterra-home"
    home.mkdir()
    monkeypatch.setenv("SUBTERRA_HOME", str(home))
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("SUBTERRA_MODELS", str(MODEL_CACHE))
    return home


@pytest.fixture
def store(subterra_home: Path):
    from engine.store import Store

    return Store()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir() -> Path:
    os.environ["SUBTERRA_MODELS"] = str(MODEL_CACHE)
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    from engine.base_model import smollm2_tokenizer_dir

    return smollm2_tokenizer_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer_dir: Path) -> Path:
    """A 2-layer random Llama with the real SmolLM2 tokenizer, chat template and context (8,192 tokens: the
    in-context agent's flowchart prompt must fit, as it does on SmolLM2), saved in HF format."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-model")
    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real bundled SmolLM2-135M-Instruct as a plain checkpoint (converted once, ~50 s)."""
    os.environ["SUBTERRA_MODELS"] = str(MODEL_CACHE)
    from engine.base_model import smollm2_dir

    return smollm2_dir()


STUDIO_MAIN = ROOT / "ui" / "main.py"


@pytest.fixture
async def user(subterra_home: Path):  # type: ignore[no-untyped-def]
    """The studio under NiceGUI's simulated user, on this test's data dir (seeded with the sample flows).

    Its requests carry Host `test`, which ui/main.py admits for the simulation; the front door itself is tested in
    tests/test_hardening_studio.py. Job workers a test leaves running are killed afterwards."""
    import signal

    from nicegui.testing.user_simulation import user_simulation

    from engine.jobs import list_jobs
    from engine.store import Store

    Store()
    async with user_simulation(main_file=STUDIO_MAIN) as u:
        yield u
    for j in list_jobs():
        if j.live and j.pid:
            try:
                os.killpg(j.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

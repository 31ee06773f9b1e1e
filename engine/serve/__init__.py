"""Serve: compiled models behind an OpenAI-compatible HTTP API.

    server.py   the built-in server (FastAPI + the local transformers backend)
    vllm.py     a managed vLLM server in its own environment, started and stopped for you
"""

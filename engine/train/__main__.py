"""`python -m engine.train CONFIG.json`: what the CLI, the launchers and launch bundles run on every rank."""

from __future__ import annotations

import sys
from pathlib import Path

from engine.errors import SubterraError
from engine.train.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m engine.train CONFIG.json", file=sys.stderr)
        return 2
    cfg = TrainConfig.model_validate_json(Path(args[0]).read_text())
    try:
        if cfg.deepspeed:
            from engine.train.distributed import run_worker

            run_worker(cfg)
        else:
            from engine.train.loop import compile_model

            print(compile_model(cfg))
    except SubterraError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

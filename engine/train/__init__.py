"""Compile: full-parameter fine-tuning of a small model on a flow's conversations.

    config.py       TrainConfig, the one source of every training option
    render.py       a conversation → (token ids, loss mask), explicitly
    packing.py      padding-free packed micro-batches, varlen attention
    model.py        loading the model to train (one path for every stepper)
    stepper.py      the Stepper protocol and the plain PyTorch stepper
    checkpoint.py   trainer state, RNG state, atomic checkpoint folders
    loop.py         setup → fit → validate → finish
    distributed.py  DeepSpeed ZeRO-3 ranks and their stepper
    bundle.py       launch bundles for a remote GPU machine
    __main__.py     `python -m engine.train CONFIG.json`
"""

"""The accelerate process state of the sharded commands (trainer.prepare, trainer.evaluate).

`accelerate launch --multi_gpu --num_processes N` starts N processes; each takes every N-th item. On a machine
without GPUs they run on the CPU (gloo), so the same command works on a laptop and in CI.
"""
from __future__ import annotations

import os


def process_state():
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:  # every process would do all the work, writing the same files
        raise RuntimeError(f"{launched} processes were launched but accelerate sees {state.num_processes}; "
                           "launch with accelerate launch --multi_gpu --num_processes N")
    return state

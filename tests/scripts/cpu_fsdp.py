"""Runs a script under FSDP on CPU processes (gloo), for the FSDP tests on machines without GPUs.

accelerate (1.15, and 1.16 still) turns an ``accelerate launch --use_fsdp`` run into FSDP only for accelerator
devices: on CPU processes (``--use_cpu true``, distributed type MULTI_CPU) it ignores ``ACCELERATE_USE_FSDP`` and
the Trainer wraps the model in DDP. torch's FSDP2 itself runs on CPU with gloo. This launcher lets accelerate take
its FSDP branch on CPU and then runs the script as ``python script args`` would:

    accelerate launch --multi_gpu --num_processes 2 --use_fsdp ... tests/scripts/cpu_fsdp.py SCRIPT ARGS...

Only the distributed type accelerate reads when it builds its state is changed; the device stays the CPU and
the process group gloo.
"""

import faulthandler
import os
import runpy
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def allow_fsdp_on_cpu() -> None:
    """Before accelerate builds its state, the process state of these CPU processes says what it says on GPUs
    (MULTI_GPU): accelerate then takes its FSDP branch and, as there, records FSDP for both states. The device
    (the CPU) and the process group (gloo) were set up before and stay as they are."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, **kwargs):
        partial = PartialState(cpu=True)
        if partial.distributed_type == DistributedType.MULTI_CPU and not AcceleratorState._shared_state:
            PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
        original(self, *args, **kwargs)

    AcceleratorState.__init__ = init


if __name__ == "__main__":
    # A hung collective shows where each process waits: `kill -USR1 <pid>` prints its stack.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    allow_fsdp_on_cpu()
    script, *rest = sys.argv[1:]
    sys.argv = [script, *rest]
    runpy.run_path(script, run_name="__main__")

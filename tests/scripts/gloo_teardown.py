"""Ends a 2-process gloo run while gloo's worker thread still releases a tensor: ``destroy`` or ``exit``.

Run by tests/test_teardown.py under torchrun (``core.upstream`` entry 32). Each process wraps a module in DDP (the
Trainer keeps its DDP model until the process ends), then all-gathers a tensor that rank 1 joins a second late, so
the worker thread that ran the gather holds the input's last reference; a finalizer on it sleeps, keeping that
release going while the process ends. ``destroy`` ends as ``Trainer.end()`` does (``destroy_process_group``, then
the interpreter's exit); ``exit`` ends with ``exit_without_gloo_teardown``. Each process prints a line when its
work is done, and an exit handler prints another.
"""

import atexit
import sys
import time
import weakref

import torch
import torch.distributed as dist

from softprompt_hf.core.upstream import exit_without_gloo_teardown


def main(mode: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    atexit.register(print, f"rank {rank}: exit handlers ran", flush=True)
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))  # noqa: F841 - alive until the end
    sent = torch.full((4,), float(rank))
    weakref.finalize(sent, time.sleep, 2.0)  # runs on the thread that drops the tensor's last reference
    gathered = [torch.empty(4) for _ in range(dist.get_world_size())]
    if rank == 1:
        time.sleep(1.0)
    work = dist.all_gather(gathered, sent, async_op=True)
    del sent
    work.wait()
    del work
    print(f"rank {rank}: gathered {[g[0].item() for g in gathered]}", flush=True)
    if mode == "destroy":
        dist.destroy_process_group()
        return
    exit_without_gloo_teardown(0)


if __name__ == "__main__":
    main(sys.argv[1])

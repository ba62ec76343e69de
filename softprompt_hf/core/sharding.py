"""Scoring a soft-prompt model whose frozen base is sharded by FSDP2 (``fully_shard``, through accelerate).

Under FSDP each process holds a shard of every parameter, and a module's parameters are gathered only while
FSDP runs that module's forward. The package's decoder (:mod:`softprompt_hf.inference.engine`) calls the base model,
the prompt encoder and the output layer itself, outside the wrapped model's ``forward``, and each process
decodes its own share of the eval rows, a different number of forwards on each. :func:`run_sharded` makes that
work without gathering the whole model:

- The scoring runs as a forward method of the FSDP root (``register_fsdp_forward_method``): the root's own
  parameters (in accelerate's transformer-layer wrapping, the embeddings, the final norm, the output layer and
  the soft prompt's modules) are gathered once for the scoring; every decoder layer is its own FSDP unit and
  gathers its shard only for its forward, as in training.
- A gather is a collective: every process must run the same sequence of layer forwards. Before each forward of
  the base model, the processes agree (one ``all_reduce`` of a flag) that at least one of them has a forward to
  run; a process whose share is done runs a one-token forward of the base model in step with the others until
  none has anything left. The predictions are each process's own, as under DDP.

Saving needs the soft prompt's modules whole, and they live in the root unit: :func:`gather_root` gathers
them on every process before the main process alone saves (the Trainer's checkpoints), :func:`gathered_root`
holds them gathered while the main process alone writes the adapter, and :func:`full_tensor` /
:func:`copy_into` read and write a sharded parameter whole (the soft-prompt state of every checkpoint).

FSDP1 (``FullyShardedDataParallel``) is not supported: :func:`check_supported` refuses it with the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from peft import PeftModel
from transformers.utils import logging

__all__ = [
    "FSDP1_MESSAGE",
    "check_supported",
    "copy_into",
    "fsdp_root",
    "full_tensor",
    "gathered_root",
    "local_parameter_bytes",
    "reshard_root",
    "gather_root",
    "run_sharded",
    "sharded_by_fsdp",
    "trainable_state",
]

logger = logging.get_logger(__name__)

T = TypeVar("T")

FSDP1_MESSAGE = (
    "softprompt_hf cannot score a model wrapped by FSDP1 (FullyShardedDataParallel): its flat parameters are "
    "gathered only inside the wrapper's forward, and the soft prompt's decoding runs the modules itself. Use FSDP2: "
    "`fsdp_version: 2` in the accelerate config (recipes/accelerate/fsdp.yaml), or `--fsdp_version 2` with "
    "`accelerate launch --use_fsdp`."
)

# The name under which the scoring runs as a forward method of the FSDP root.
_METHOD = "_softprompt_hf_run_sharded"


def _fsdp_kinds() -> tuple[type | None, type | None]:
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # a torch without distributed support
        return None, None
    return FSDPModule, FullyShardedDataParallel


def sharded_by_fsdp(model: torch.nn.Module) -> bool:
    """Whether FSDP (``FullyShardedDataParallel`` or ``fully_shard``) manages ``model`` or any of its modules."""
    kinds = tuple(kind for kind in _fsdp_kinds() if kind is not None)
    return bool(kinds) and any(isinstance(module, kinds) for module in model.modules())


def fsdp_root(model: torch.nn.Module) -> torch.nn.Module | None:
    """The outermost ``fully_shard`` module of ``model`` (``model`` itself as accelerate prepares it), or None
    when FSDP2 does not manage it."""
    fsdp2, _ = _fsdp_kinds()
    if fsdp2 is None:
        return None
    if isinstance(model, fsdp2):
        return model
    # A module inside the root was passed (the base model of a sharded PeftModel, say): its root is not
    # reachable from it, so its own outermost FSDP units would be treated as roots. Refuse in check_supported.
    return None


def check_supported(model: torch.nn.Module) -> None:
    """Raises ``ValueError`` when ``model`` is sharded in a way the soft prompt's decoding cannot score: FSDP1,
    or an FSDP2 model passed without its root (a module inside the ``fully_shard`` root)."""
    fsdp2, fsdp1 = _fsdp_kinds()
    if fsdp1 is not None and any(isinstance(module, fsdp1) for module in model.modules()):
        raise ValueError(FSDP1_MESSAGE)
    if fsdp2 is not None and not isinstance(model, fsdp2) and any(isinstance(m, fsdp2) for m in model.modules()):
        raise ValueError(
            f"{type(model).__name__} holds modules sharded by FSDP2 but is not the FSDP root itself: pass the model "
            "the Trainer was given (accelerate shards it in place), not one of its submodules."
        )


def gather_root(model: torch.nn.Module) -> None:
    """Gathers the FSDP2 root's own parameters (the soft prompt's modules among them) on every process, where they
    stay until FSDP reshards them (after the next backward). Every process must call it; a no-op without FSDP2.

    peft 0.21.2 saves a soft prompt by running its encoder (``get_prompt_embedding_to_save``) on the live
    parameters, and transformers 5.24's ``Trainer.save_model`` calls ``save_pretrained`` on the main process only:
    with the root sharded, that fails ("aten.embedding.default got mixed torch.Tensor and DTensor"); gathered,
    it needs no other process (listed in ``softprompt_hf.core.upstream``). The package's callbacks call this before
    every save the Trainer makes and at the end of training.
    """
    root = fsdp_root(model)
    if root is not None and dist.is_available() and dist.is_initialized():
        root.unshard()  # type: ignore[operator]


@contextmanager
def gathered_root(model: torch.nn.Module) -> Iterator[None]:
    """Holds the FSDP2 root's own parameters (the soft prompt's modules among them) gathered, on every process,
    so that the main process alone can save the adapter inside the block. A no-op without FSDP2."""
    root = fsdp_root(model)
    if root is None or not dist.is_available() or not dist.is_initialized():
        yield
        return
    root.unshard()  # type: ignore[operator]
    try:
        yield
    finally:
        root.reshard()  # type: ignore[operator]


def reshard_root(model: torch.nn.Module) -> None:
    """Registers the FSDP2 root's sharded parameters again (freeing gathered copies; no communication), so that
    writes into them reach the shards FSDP keeps. A no-op without FSDP2."""
    root = fsdp_root(model)
    if root is not None:
        root.reshard()  # type: ignore[operator]


def local_parameter_bytes(model: torch.nn.Module, *, trainable: bool = False) -> int:
    """Bytes of ``model``'s frozen (or, with ``trainable=True``, trainable) parameters that this process holds:
    under FSDP2 its shards, or the gathered parameters of a unit that is gathered at the moment (the root unit
    stays gathered after a forward until the next backward). Each storage counts once, so a tied weight (the
    output layer's and the embedding's) is not counted twice."""
    storages: dict[int, int] = {}
    for param in model.parameters():
        if param.requires_grad != trainable:
            continue
        local = param.to_local() if hasattr(param, "to_local") else param
        storage = local.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a parameter sharded by FSDP2 (a ``DTensor``: a collective, every process calls it),
    or ``tensor`` itself."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable parameters of ``model`` (a soft prompt's), each whole, detached, on the CPU: what a
    checkpoint holds. Under FSDP2 each parameter is gathered (a collective: every process calls it)."""
    return {
        name: full_tensor(param.detach()).cpu().contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


@torch.no_grad()
def copy_into(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copies the whole ``value`` into ``param``, which FSDP2 may shard: each process keeps its own shard (every
    process passes the same ``value``; no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    value = value.to(dtype=param.dtype)
    if isinstance(param, DTensor):
        value = distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
    else:
        value = value.to(param.device)
    param.copy_(value)


def run_sharded(model: torch.nn.Module, function: Callable[[], T]) -> T:
    """Runs ``function()`` (which decodes with ``model``) so that it works when FSDP2 shards ``model``.

    Without FSDP it is ``function()``. Under FSDP2 every process must call it, as with any collective: the
    scoring runs as a forward of the FSDP root, and the processes keep their base-model forwards in step (see
    the module docstring). If ``function`` raises on one process, the others raise too once all are done,
    instead of waiting for it forever.
    """
    check_supported(model)
    root = fsdp_root(model)
    if root is None or not dist.is_available() or not dist.is_initialized():
        return function()
    if not hasattr(root, _METHOD):
        from torch.distributed.fsdp import register_fsdp_forward_method

        # An instance attribute, so that only this model gets it; registered once, FSDP's hooks wrap it.
        setattr(root, _METHOD, _run.__get__(root, type(root)))
        register_fsdp_forward_method(root, _METHOD)
    # The root keeps its parameters gathered afterwards, as after any forward of an FSDP2 root (FSDP reshards
    # it after the next backward): a checkpoint that the Trainer saves after an evaluation finds them whole.
    return getattr(root, _METHOD)(function)


def _run(root: torch.nn.Module, function: Callable[[], T]) -> T:
    """The body of the root's registered forward method: ``function()`` with the forwards kept in step."""
    base = root.get_base_model() if isinstance(root, PeftModel) else root
    device = next(root.parameters()).device
    lockstep = _Lockstep(base, device)
    handle = base.register_forward_pre_hook(lockstep.before_forward)
    failure: BaseException | None = None
    result: Any = None
    try:
        result = function()
    except BaseException as err:  # keep serving the others' forwards, then raise
        failure = err
    finally:
        handle.remove()
    lockstep.serve()
    failed = lockstep.count(failure is not None)
    if failure is not None:
        raise failure
    if failed:
        raise RuntimeError(
            f"{failed} other process(es) failed while scoring under FSDP; see their error messages in the log."
        )
    return result


class _Lockstep:
    """Keeps every process's base-model forwards in step while each decodes its own rows."""

    def __init__(self, base: torch.nn.Module, device: torch.device) -> None:
        self.base = base
        self.device = device
        self.dummies = 0

    def count(self, flag: bool) -> int:
        """How many processes say ``flag`` (one ``all_reduce``)."""
        tensor = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(tensor)
        return int(tensor.item())

    def before_forward(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        # This process has a forward to run; the others run theirs or a one-token forward with it.
        self.count(True)

    def serve(self) -> None:
        """Runs one-token forwards of the base model while any other process still has forwards to run."""
        config = getattr(self.base, "config", None)
        token = getattr(config, "eos_token_id", None)
        token = token[0] if isinstance(token, list) else token
        input_ids = torch.tensor([[token or 0]], device=self.device)
        mask = torch.ones_like(input_ids)
        while self.count(False):
            with torch.no_grad():
                self.base(input_ids=input_ids, attention_mask=mask, use_cache=False)
            self.dummies += 1
        if self.dummies:
            logger.debug("FSDP scoring: %d one-token forwards in step with the other processes.", self.dummies)

"""``launch`` that also runs N CPU processes (gloo) where no GPU exists.

With CUDA available this is exactly :func:`detectron2.engine.launch`. Without CUDA, detectron2
v0.6's worker asserts CUDA, hard-codes NCCL and calls ``torch.cuda.set_device``; here we spawn the
same workers with the gloo backend instead, and build ``comm``'s local process group the way
detectron2 does, so ``comm.get_local_rank()`` and friends behave identically. This is how the
multi-process code paths (DDP, evaluation gathering) are tested on CPU.
"""

from __future__ import annotations

import gc
import logging
import socket
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _setup_local_group(world_size: int, per_machine: int, machine_rank: int) -> None:
    """Create the per-machine process group that detectron2's ``comm`` reads."""
    if hasattr(comm, "create_local_process_group"):  # upstream main
        comm.create_local_process_group(per_machine)
        return
    # detectron2 v0.6 keeps the group in a module attribute set by its own worker.
    for i in range(world_size // per_machine):
        ranks = list(range(i * per_machine, (i + 1) * per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _cpu_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Sequence[Any],
    timeout: timedelta,
) -> None:
    global_rank = machine_rank * per_machine + local_rank
    try:
        dist.init_process_group(
            backend="gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logger.error("could not join the process group at %s", dist_url)
        raise
    _setup_local_group(world_size, per_machine, machine_rank)
    comm.synchronize()
    main_func(*args)
    # Orderly teardown. A DistributedDataParallel left in a reference cycle would otherwise be
    # collected at interpreter exit, after gloo is gone, and abort the process ("terminate called
    # without an active exception", seen in ~1 of 3 runs on torch 2.14 without these lines).
    gc.collect()
    comm.synchronize()
    dist.destroy_process_group()


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each machine.

    Same signature as :func:`detectron2.engine.launch`. Without CUDA, ``num_gpus_per_machine``
    is the number of CPU worker processes and the gloo backend is used.
    """
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(
            f"num_gpus_per_machine={num_gpus_per_machine} and num_machines={num_machines} must "
            "both be >= 1 (use --num-gpus 1 for a single process)"
        )
    if torch.cuda.is_available():
        d2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=tuple(args),
            timeout=timeout,
        )
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url is None or dist_url == "auto":
        if num_machines > 1:
            raise ValueError("--dist-url auto only works on one machine; pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.info("no CUDA: launching %d CPU processes with the gloo backend", num_gpus_per_machine)
    mp.spawn(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )

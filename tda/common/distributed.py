"""Data parallelism across processes: rank/world, shards, ordered gathers, one failure line.

A command runs unchanged under ``torchrun --nproc_per_node N -m tda ...`` or
``accelerate launch --multi_gpu --num_processes N -m tda ...``: the launcher sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``, and every helper here reads
them. Without them (a plain ``tda ...``) every helper is the one-process identity.

- :func:`shard_range` — this process's contiguous share of ``n`` items, as
  ``accelerate.PartialState.split_between_processes`` splits (the first ranks take one more),
  optionally in whole units (batches), so every item is computed in exactly the batch a one-process
  run would put it in;
- :func:`collect` — run ``fn()`` here, gather every rank's result in rank order (to every rank or
  to the main one). If any rank raised, *every* rank raises :class:`DistributedFailure` with that
  rank's one-line message, so a job ends with one line and writes nothing;
- :func:`map_sharded` — ``[fn(i, item) for i, item in enumerate(items)]`` with each rank
  computing its shard; results come back in the original order;
- :func:`on_main` — run ``fn()`` on the main process only and hand its result to every rank.

Inside ``collect``/``on_main`` helpers act locally (world of one), so a function that itself calls
a collective helper (a cached calibration, say) is safe to run inside a shard.

The process group is created on first use: gloo on CPU, ``cpu:gloo,cuda:nccl`` when CUDA exists
(objects travel over gloo, tensors on GPUs over NCCL), with a timeout of ``$TDA_DIST_TIMEOUT``
seconds (default 1800) so a stuck rank does not hang the job forever. A rank that dies closes its
sockets, so the others fail at once; the launchers (torchrun, accelerate) then stop the rest.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from tda.common.errors import TDAError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_GRACE_S = 3.0

_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar("tda_dist_local", default=False)
_REAL_STDERR = sys.stderr


class DistributedFailure(TDAError):
    """A process of a distributed job failed; raised on every rank with that rank's message."""


# ----- who am I ----------------------------------------------------------------------------------
def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


def world_size() -> int:
    """Processes in the job (``$WORLD_SIZE``, 1 without a launcher)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def rank() -> int:
    """This process's global rank (``$RANK``, 0 without a launcher)."""
    return _env_int("RANK", 0) if world_size() > 1 else 0


def local_rank() -> int:
    """This process's rank on its node (``$LOCAL_RANK``): which GPU it uses."""
    return _env_int("LOCAL_RANK", 0) if world_size() > 1 else 0


def local_world_size() -> int:
    """Processes on this node (``$LOCAL_WORLD_SIZE``, else the world size)."""
    return max(1, _env_int("LOCAL_WORLD_SIZE", world_size())) if world_size() > 1 else 1


def is_distributed() -> bool:
    """True when a launcher started several processes for this job."""
    return world_size() > 1


def is_main() -> bool:
    """True on the process that prints progress and writes outputs (rank 0)."""
    return rank() == 0


def active() -> bool:
    """True when helpers must talk to the other ranks (distributed and not inside a local section)."""
    return is_distributed() and not _LOCAL.get()


@contextlib.contextmanager
def local_section() -> Iterator[None]:
    """Within the block, every helper acts as if this were a one-process job."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def timeout_s() -> float:
    try:
        return max(1.0, float(os.environ.get("TDA_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_TIMEOUT_S


# ----- the process group ---------------------------------------------------------------------------
def init() -> None:
    """Create the default process group once (env:// rendezvous set up by the launcher)."""
    import datetime

    import torch
    import torch.distributed as dist

    if not is_distributed() or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s()))
    except Exception as e:  # the rendezvous failed: a peer never came, or the address is wrong
        raise DistributedFailure(f"could not join the other {world_size() - 1} process(es): {_first_line(e)}") from None
    import atexit

    atexit.register(_shutdown)


def _shutdown() -> None:
    import torch.distributed as dist

    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _lost(e: BaseException) -> DistributedFailure:
    return DistributedFailure(
        f"lost contact with another process of this job (it stopped, or did not answer within "
        f"{timeout_s():g} s; see TDA_DIST_TIMEOUT): {_first_line(e)}"
    )


# ----- splitting ---------------------------------------------------------------------------------
def shard_range(n: int, *, unit: int = 1, world: int | None = None, rank_: int | None = None) -> range:
    """Indices ``[start, stop)`` of this rank's contiguous share of ``n`` items.

    Items are split in whole ``unit``s (e.g. batches): ``ceil(n/unit)`` units shared out as
    ``accelerate``'s ``split_between_processes`` does (the first ``units % world`` ranks take one
    more). Outside a distributed job (or inside a local section) it is ``range(n)``.
    """
    if world is None:
        world = world_size() if active() else 1
    r = (rank() if active() else 0) if rank_ is None else rank_
    unit = max(1, int(unit))
    units = -(-n // unit)
    per, extra = divmod(units, world)
    start_u = r * per + min(r, extra)
    stop_u = start_u + per + (1 if r < extra else 0)
    return range(min(n, start_u * unit), min(n, stop_u * unit))


# ----- collectives with one failure line ----------------------------------------------------------
def _run_local(fn: Callable[[], T]) -> tuple[str, Any]:
    """``("ok", fn())`` or ``("err", one line)``; a traceback with ``TDA_DEBUG=1``."""
    with local_section():
        try:
            return "ok", fn()
        except (KeyboardInterrupt, SystemExit):
            raise
        except TDAError as e:
            return "err", str(e)
        except Exception as e:  # reported by the main process as one line
            if os.environ.get("TDA_DEBUG"):
                import traceback

                traceback.print_exc(file=_REAL_STDERR)
            return "err", f"{type(e).__name__}: {_first_line(e)}"


def _raise_failures(statuses: Sequence[tuple[str, Any]]) -> None:
    bad = [(r, msg) for r, (st, msg) in enumerate(statuses) if st != "ok"]
    if bad:
        r, msg = bad[0]
        more = f" (and {len(bad) - 1} more process(es))" if len(bad) > 1 else ""
        raise DistributedFailure(f"process {r} of {len(statuses)} failed: {msg}{more}")


def collect(fn: Callable[[], T], *, to: str = "all") -> list[T] | None:
    """Run ``fn()`` on this rank; every rank's result in rank order.

    ``to="all"``: every rank gets the list; ``to="main"``: the main rank gets it, the others
    ``None``. A failure on any rank raises :class:`DistributedFailure` on every rank (after all
    ranks have finished their own part). Outside a distributed job: ``[fn()]`` (errors propagate).
    """
    if to not in ("all", "main"):
        raise ValueError("to must be 'all' or 'main'")
    if not active():
        return [fn()]
    import torch.distributed as dist

    init()
    status, value = _run_local(fn)
    world = world_size()
    try:
        if to == "all":
            out: list = [None] * world
            dist.all_gather_object(out, (status, value))
            _raise_failures(out)
            return [v for _, v in out]
        flags: list = [None] * world
        dist.all_gather_object(flags, (status, value if status != "ok" else None))
        _raise_failures(flags)
        gathered: list | None = [None] * world if is_main() else None
        dist.gather_object(value, gathered, dst=0)
        return gathered
    except DistributedFailure:
        raise
    except Exception as e:  # gloo/NCCL: a peer vanished or the timeout passed
        raise _lost(e) from None


def map_sharded(fn: Callable[[int, Any], T], items: Sequence, *, unit: int = 1, to: str = "all",
                progress: Callable | None = None) -> list[T] | None:
    """``[fn(i, items[i]) for every i]`` in the original order, each rank computing its shard.

    ``unit``: shard in whole groups of items (see :func:`shard_range`). ``progress(iterable,
    total=...)`` wraps this rank's loop on the main process only.
    """
    mine = shard_range(len(items), unit=unit)

    def work() -> list[T]:
        it: Any = [(i, items[i]) for i in mine]
        if progress is not None and is_main():
            it = progress(it, total=len(mine))
        return [fn(i, item) for i, item in it]

    parts = collect(work, to=to)
    return None if parts is None else [r for part in parts for r in part]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn()`` on the main process only; every rank gets its result (or its failure)."""
    if not active():
        return fn()
    import torch.distributed as dist

    init()
    obj = [_run_local(fn) if is_main() else None]
    try:
        dist.broadcast_object_list(obj, src=0)
    except Exception as e:
        raise _lost(e) from None
    status, value = obj[0]
    if status != "ok":
        raise DistributedFailure(f"process 0 of {world_size()} failed: {value}")
    return value


def barrier() -> None:
    """Wait for every rank (a no-op outside a distributed job)."""
    on_main(lambda: None)


# ----- output: progress once, one error line --------------------------------------------------------
def quiet_other_ranks() -> None:
    """On a rank other than the main one, send stdout/stderr to /dev/null (progress shows once)."""
    global _REAL_STDERR
    if is_distributed() and not is_main() and not os.environ.get("TDA_DEBUG"):
        _REAL_STDERR = sys.stderr
        devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        sys.stdout = devnull
        sys.stderr = devnull


def report_error(line: str, exc: BaseException | None = None) -> None:
    """Print a command's one-line error, once for the whole job.

    The main process prints it. Another rank first waits ``$TDA_DIST_GRACE`` seconds (default 3):
    long enough for the main process to print the same failure and exit, whereupon the launcher
    stops this one (had this rank exited first, the launcher could stop the main one before it
    printed). It then prints nothing for a :class:`DistributedFailure` (the main one reports those)
    and, for any other error (one the main process did not share), the line prefixed with its rank.
    """
    if not is_distributed() or is_main():
        print(line, file=sys.stderr, flush=True)
        return
    with contextlib.suppress(ValueError):
        time.sleep(float(os.environ.get("TDA_DIST_GRACE", DEFAULT_GRACE_S)))
    if not isinstance(exc, DistributedFailure):
        print(f"[process {rank()} of {world_size()}] {line}", file=_REAL_STDERR, flush=True)

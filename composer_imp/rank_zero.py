"""Decisions taken once: rank 0 reads the run folder and decides, every rank gets the answer.

Under Composer's launcher every rank runs the same level loop; a decision read from files (is a level done, which
mask) must be the same on every rank, so rank 0 takes it and broadcasts it. In a single process these are plain
calls.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from typing import Any, Callable, Iterator

from composer.utils import dist

__all__ = ['on_rank0', 'log_rank0', 'held_on_rank0']

log = logging.getLogger('composer_imp')


def on_rank0(compute: Callable[[], Any]) -> Any:
    """``compute()`` run on rank 0 only (it reads or writes the run folder) and its result sent to every rank; it also
    serves as a barrier. An exception raised by it on rank 0 is raised on every rank (as itself, or as a
    ``RuntimeError`` with its message where it cannot be sent), so no rank waits for ever."""
    if dist.get_world_size() == 1:
        return compute()
    original = None
    if dist.get_global_rank() == 0:
        try:
            holder = [(compute(), None)]
        except Exception as e:
            original = e
            try:
                pickle.dumps(e)
                holder = [(None, e)]
            except Exception:
                holder = [(None, RuntimeError(f'{type(e).__name__} on rank 0: {e}'))]
    else:
        holder = [None]
    dist.broadcast_object_list(holder, src=0)
    value, error = holder[0]
    if original is not None:
        raise original
    if error is not None:
        raise error
    return value


def log_rank0(message: str, *args: Any) -> None:
    """``logging.info`` on rank 0 only (every rank runs the same loop)."""
    if dist.get_global_rank() == 0:
        log.info(message, *args)


@contextlib.contextmanager
def held_on_rank0(lock: Any) -> Iterator[None]:
    """Hold ``lock`` (a :class:`~composer_imp.folder_lock.FolderLock`) on rank 0 for the block; a refusal is raised
    on every rank."""
    on_rank0(lambda: lock.acquire() and None)
    try:
        yield
    finally:
        if dist.get_global_rank() == 0:
            lock.release()

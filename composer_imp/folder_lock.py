"""One process at a time in a run folder: an OS-level exclusive lock (``fcntl.flock``) on a file inside it.

The kernel releases the lock when the process ends, however it ends (an exception, ``sys.exit``, SIGKILL, a
crashed node's lost file handle), so a lock left by a killed run is never in the way: the file stays, the lock
does not. The file records who holds it (pid, host, command, start time) so a refused run can name the other.

On network filesystems ``flock`` may be local to one node: runs on several nodes share one folder only through
Composer's launcher, where rank 0 alone takes the lock.

Example:
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> with FolderLock(os.path.join(folder, '.lock'), 'training') as lock:
    ...     lock.holder()['purpose']
    'training'
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
from typing import Optional

__all__ = ['FolderLock', 'FolderBusy']

_HELD: dict = {}  # path -> the FolderLock this process holds on it (flock is per open file: never lock twice)


class FolderBusy(ValueError):
    """Another process holds the run folder's lock."""


class FolderLock:
    """An exclusive, non-blocking lock on ``path`` (created with its folder if missing).

    Args:
        path: the lock file.
        purpose: what the holder does (``'training'``, ``'analysis'``), recorded for the message of a refused run.
    """

    def __init__(self, path: str, purpose: str):
        self.path = os.path.abspath(path)
        self.purpose = purpose
        self._file = None
        self._depth = 0  # re-entrant within one process: the controls and analysis a recipe runs after its levels
        self._delegate: Optional[FolderLock] = None
        self.created_folder = self.created_file = False  # by this acquire: what release(discard=True) removes

    def acquire(self) -> 'FolderLock':
        held = _HELD.get(self.path)
        if held is not None:
            held._depth += 1
            self._delegate = held if held is not self else None
            return self
        folder = os.path.dirname(self.path)
        try:
            self.created_folder = not os.path.isdir(folder)
            os.makedirs(folder, exist_ok=True)
            self.created_file = not os.path.exists(self.path)
            handle = open(self.path, 'a+')
        except OSError as e:
            raise ValueError(f'The run folder {os.path.dirname(self.path)} cannot be used: {e.strerror or e} '
                             f'({type(e).__name__}). Choose a save_folder that is a writable directory (or a path '
                             'where one can be created).') from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not os.path.exists(self.path) or os.stat(self.path).st_ino != os.fstat(handle.fileno()).st_ino:
                # The file was removed (a refused run discarding it) between our open and our lock: lock the new one.
                handle.close()
                return self.acquire()
        except BlockingIOError:
            handle.seek(0)
            holder = _parse(handle.read())
            handle.close()
            who = (f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('purpose')}, started "
                   f"{holder.get('started')}: {holder.get('command')})" if holder else 'another process')
            raise FolderBusy(f'{os.path.dirname(self.path)} is in use by {who}. Two runs in one folder would mix '
                             'their levels: wait for it to finish (or stop it), or use another save_folder.') from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'purpose': self.purpose,
                                 'started': datetime.datetime.now().isoformat(timespec='seconds'),
                                 'command': ' '.join(sys.argv)[:500]}))
        handle.flush()
        self._file, self._depth = handle, 1
        _HELD[self.path] = self
        return self

    def release(self, discard: bool = False) -> None:
        """Release the lock. ``discard``: the holder wrote nothing worth keeping (a run refused before it started):
        remove the lock file if this acquire created it, and the whole folder if it created that."""
        if self._delegate is not None:
            self._delegate, delegate = None, self._delegate
            delegate.release()
            return
        if self._file is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        _HELD.pop(self.path, None)
        # Otherwise the file stays: removing it would let a third process lock a new inode while a second holds the old.
        if discard and self.created_folder:
            shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)
        elif discard and self.created_file:
            os.remove(self.path)
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def holder(self) -> Optional[dict]:
        """Who holds (or last held) the lock, as recorded in the file."""
        try:
            with open(self.path) as f:
                return _parse(f.read())
        except OSError:
            return None

    def __enter__(self) -> 'FolderLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _parse(text: str) -> Optional[dict]:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

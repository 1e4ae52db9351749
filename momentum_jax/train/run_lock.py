"""One run per folder: an exclusive lock on a run folder, held for the run's lifetime.

Two runs writing into one folder interleave their metrics, lose each other's checkpoints and
leave one results file between them. So a run takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on
``<folder>/run.lock`` before it writes anything and writes its process id into the file. The
lock belongs to the open file, so the operating system releases it however the process ends (a
SIGKILL included) and a later run into the folder takes it and resumes; a second run while the
first holds it stops at once with ``RunFolderLockedError`` naming the folder and the holder's
process id. The lock is advisory: only runs that take it are kept apart.

``train`` holds its workdir's lock while it trains; an experiment holds its run folder's lock for
the rest of its process (``hold_until_exit``), and its models' folders, one level down, are each
locked by ``train``.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import time
from types import TracebackType

#: The lock file inside a run folder; while a run holds it, it holds the run's process id.
LOCK_FILE = "run.lock"
# How long a refused run waits for a holder that has just taken the lock to write its id.
_PID_WAIT_S = 0.5


class RunFolderLockedError(RuntimeError):
  """Another run holds the folder's lock.

  Attributes:
    folder: the run folder.
    holder_pid: the process id written by the run that holds it (None if it wrote none).
  """

  def __init__(self, folder: pathlib.Path, holder_pid: int | None):
    holder = "another process" if holder_pid is None else f"process {holder_pid}"
    super().__init__(
        f"the run folder {folder} is in use: {holder} holds its lock {folder / LOCK_FILE}; let "
        "that run finish (or stop it), or give this run another output folder (--output-dir, "
        "or workdir)")
    self.folder = folder
    self.holder_pid = holder_pid


class RunLock:
  """The exclusive lock on ``folder`` (created if absent), taken on construction.

  Use it as a context manager, or call ``release``. Two ``RunLock``\\s of one folder exclude each
  other in one process too.

  Raises:
    RunFolderLockedError: another run holds the folder.
    NotADirectoryError: ``folder``, or a folder above it, is a file.
  """

  def __init__(self, folder: str | os.PathLike[str]):
    self.folder = pathlib.Path(folder)
    _make_folder(self.folder)
    self.path = self.folder / LOCK_FILE
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder_pid(fd)
      os.close(fd)
      raise RunFolderLockedError(self.folder, holder) from None
    except BaseException:
      os.close(fd)
      raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    self._fd: int | None = fd

  def holds_lock_file(self) -> bool:
    """Whether the lock is held and ``folder/run.lock`` is still the file it locks (not removed
    or replaced along with its folder)."""
    if self._fd is None:
      return False
    try:
      on_disk, held = os.stat(self.path), os.fstat(self._fd)
    except FileNotFoundError:
      return False
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

  def release(self) -> None:
    """Empties the lock file and releases the lock (again: nothing)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
    finally:
      os.close(fd)

  def __enter__(self) -> RunLock:
    return self

  def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
               traceback: TracebackType | None) -> None:
    self.release()


# The run folders this process holds until it exits: the run folder's absolute path -> its lock.
_HELD_UNTIL_EXIT: dict[pathlib.Path, RunLock] = {}


def hold_until_exit(folder: str | os.PathLike[str]) -> RunLock:
  """Takes ``folder``'s lock for the rest of this process (the operating system releases it when
  the process ends); a folder this process already holds this way is not taken again, so a
  process may start several runs into one folder one after another (an experiment's ``main``
  called twice).

  Raises:
    RunFolderLockedError: another run holds the folder.
    NotADirectoryError: ``folder``, or a folder above it, is a file.
  """
  key = pathlib.Path(folder).absolute()
  held = _HELD_UNTIL_EXIT.get(key)
  if held is not None and held.holds_lock_file():
    return held
  if held is not None:
    held.release()  # its folder was removed or replaced: lock the one there now
  _HELD_UNTIL_EXIT[key] = lock = RunLock(key)
  return lock


def _make_folder(folder: pathlib.Path) -> None:
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
                    folder)
    raise NotADirectoryError(
        f"the run folder {folder} cannot be made: {blocking} is a file") from None


def _holder_pid(fd: int) -> int | None:
  """The process id in the lock file; waits briefly for a holder that has not written it yet."""
  deadline = time.monotonic() + _PID_WAIT_S
  while True:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    if text.isdigit():
      return int(text)
    if time.monotonic() > deadline:
      return None
    time.sleep(0.02)

"""Another process holding a run folder's lock, for the tests of one run per folder."""

import contextlib
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator

from momentum_jax.train import run_lock

# Takes the lock of the folder argv[1] and holds it until killed. It loads only run_lock.py
# (standard library only), so it starts in a fraction of a second.
_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("run_lock", sys.argv[2])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
lock = module.RunLock(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def held_by_another_process(folder: pathlib.Path) -> Iterator[int]:
  """Yields the process id of a fresh process holding ``folder``'s lock, and SIGKILLs it after."""
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), run_lock.__file__],
                          stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "locked", f"the holder ended (rc={proc.poll()})"
    yield proc.pid
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()

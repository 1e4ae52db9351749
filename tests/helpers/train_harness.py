"""Training in a fresh Python process, for the train tests that need one: a SIGKILL must hit a
real process, and ``XLA_FLAGS`` must be set before JAX is imported.

``kill_after_a_checkpoint`` is the harness of the resume-after-SIGKILL tests: it runs a worker
script whose metrics records are each followed by a short sleep, waits until a checkpoint is
finished and a few more steps are logged, and kills the worker there, so that the resumed run
must drop the logged records past its checkpoint and restore the rest bit for bit.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np

from momentum_jax.train import METRICS_FILE

REPO = pathlib.Path(__file__).resolve().parents[2]

# Prepended to a killable worker: sleeps after every metrics record (the sleep is the format
# field), so that the parent can kill the run between checkpoints.
_SLOW_METRICS = """
import time
from momentum_jax.train.metrics_log import MetricsLog
append = MetricsLog.append
def slow_append(self, step, values):
  append(self, step, values)
  time.sleep({sleep_s})
MetricsLog.append = slow_append
"""


def worker_env(**extra: str) -> dict[str, str]:
  """This process's environment for a worker: no inherited ``XLA_FLAGS``, the repository first
  on ``PYTHONPATH``, then ``extra``."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
  return {**env, **extra}


def finished_checkpoints(workdir: pathlib.Path) -> list[int]:
  """The steps of the checkpoints written completely under ``workdir``, ascending."""
  root = workdir / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def last_logged_step(workdir: pathlib.Path) -> int:
  """The largest step in ``workdir``'s metrics file (0 if none); a line the worker is still
  writing is skipped."""
  path = workdir / METRICS_FILE
  steps = []
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      steps.append(json.loads(line)["step"])
    except json.JSONDecodeError:
      pass
  return max(steps, default=0)


def kill_after_a_checkpoint(script: str, args: list[str], workdir: pathlib.Path, *,
                            sleep_s: float, timeout_s: float, steps_past: int = 3) -> int:
  """Runs ``python -c script *args`` (a run training into ``workdir``) with a ``sleep_s`` pause
  after every metrics record, SIGKILLs it once a checkpoint is finished and ``steps_past`` more
  steps are logged, and returns the last step logged at the kill.

  Fails the calling test if the worker ends or ``timeout_s`` passes before the kill.
  """
  proc = subprocess.Popen([sys.executable, "-c", _SLOW_METRICS.format(sleep_s=sleep_s) + script,
                           *args],
                          env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + timeout_s
  killed_after = None
  while time.monotonic() < deadline and proc.poll() is None:
    checkpoints = finished_checkpoints(workdir)
    if checkpoints and last_logged_step(workdir) >= checkpoints[-1] + steps_past:
      proc.send_signal(signal.SIGKILL)
      killed_after = last_logged_step(workdir)
      break
    time.sleep(0.01)
  proc.wait()
  output = proc.stdout.read().decode()
  assert killed_after is not None, f"worker ended (rc={proc.returncode}) before the kill:\n{output}"
  assert proc.returncode == -signal.SIGKILL
  return killed_after


def train_losses(history: list[dict[str, Any]]) -> list[float]:
  """The training losses of a run's metrics records, in order."""
  return [r["train_loss"] for r in history if "train_loss" in r]


def assert_same_params(a: Any, b: Any) -> None:
  """Asserts that two parameter pytrees are equal bit for bit."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert np.array_equal(np.asarray(x), np.asarray(y))

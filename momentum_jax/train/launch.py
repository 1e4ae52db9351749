"""Runs a Python module or script as one run of several JAX processes on this machine::

    python -m momentum_jax.train.launch --processes 2 --devices-per-process 4 \\
        -m momentum_jax.experiments.single_layer_induction --quick \\
        --config.train.mesh_shape="(1,8,1)"
    python -m momentum_jax.train.launch --processes 2 --devices-per-process 4 my_training.py ARGS

Like ``torchrun`` for PyTorch: it starts ``--processes`` Python processes, each of which joins
the run (``momentum_jax.train.distributed.initialize``, with process 0 as the coordinator on a
free local port) and then runs the module (``-m``) or script as ``__main__`` with the arguments
after it, unchanged. Each process sees ``--devices-per-process`` CPU devices of its own
(``JAX_PLATFORMS=cpu``, ``JAX_NUM_CPU_DEVICES``), and ``jax.devices()`` lists all of them: a mesh
over all the devices (``TrainConfig.mesh_shape`` with the product P·D) trains exactly as one
process with P·D devices does. This is the multi-host path of a cluster, on one machine: the
processes exchange collectives through gloo over local TCP and write one checkpoint through
orbax's multi-host path (see ``momentum_jax.train.distributed``).

Process 0's output is this command's output; the others' goes to ``--log-dir`` (default: a new
temporary folder, named when the run starts) as ``process_<p>.log``. When a process fails, the
others are stopped, the tail of a failed process's log is printed, and the command exits with
that process's status; otherwise with 0.

The environment each process gets: ``JAX_COORDINATOR_ADDRESS=localhost:<port>``,
``MOMENTUM_JAX_NUM_PROCESSES``, ``MOMENTUM_JAX_PROCESS_ID``, and the device settings above.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence

from momentum_jax.train import distributed

# How long stopped processes get to exit after SIGTERM (which JAX's preemption service may take
# as a notice, not an end) before SIGKILL.
_STOP_GRACE_S = 3.0
# How much of a failed process's log is printed.
_TAIL_LINES = 40
# The hidden flag that makes this module a worker: join the run, then run the target.
_WORKER_FLAG = "--as-worker"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m momentum_jax.train.launch",
      description="Run a module or script as one JAX run of several processes on this machine.",
      usage="%(prog)s [--processes N] [--devices-per-process D] [--port PORT] [--log-dir DIR] "
            "(-m MODULE | SCRIPT) [ARGS ...]",
      epilog="The launcher's options come first; -m MODULE or SCRIPT and everything after it is "
             "the command each process runs.")
  parser.add_argument("--processes", type=int, default=2, metavar="N",
                      help="the number of processes (default: %(default)s)")
  parser.add_argument("--devices-per-process", type=int, default=1, metavar="D",
                      help="CPU devices of each process (default: %(default)s)")
  parser.add_argument("--port", type=int, default=None,
                      help="the coordinator's local port (default: a free one)")
  parser.add_argument("--log-dir", default=None, metavar="DIR",
                      help="where the output of processes 1..N-1 goes (default: a temporary "
                           "folder)")
  return parser


# The launcher's options that take a value as the next argument.
_VALUED_OPTIONS = ("--processes", "--devices-per-process", "--port", "--log-dir")


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """``(launcher options, target)``: the target starts at ``-m`` or at the first argument that
  is neither an option nor an option's value (the script)."""
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg == "-m" or not arg.startswith("-"):
      return list(argv[:i]), list(argv[i:])
    i += 2 if arg in _VALUED_OPTIONS else 1
  return list(argv), []


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
  for name in ("processes", "devices_per_process"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  if args.port is not None and not 0 < args.port < 65536:
    parser.error(f"--port must be in [1, 65535], got {args.port}")


def process_env(process_id: int, num_processes: int, devices_per_process: int,
                port: int) -> dict[str, str]:
  """The environment of process ``process_id``: this one's, plus the run's settings."""
  env = dict(os.environ)
  env.update({
      distributed.COORDINATOR_ENV: f"localhost:{port}",
      distributed.NUM_PROCESSES_ENV: str(num_processes),
      distributed.PROCESS_ID_ENV: str(process_id),
      "JAX_PLATFORMS": "cpu",
      "JAX_NUM_CPU_DEVICES": str(devices_per_process),
  })
  return env


def _stop(processes: Sequence[subprocess.Popen]) -> None:
  """SIGTERM to each process still running, then SIGKILL to those left after the grace time."""
  running = [p for p in processes if p.poll() is None]
  for p in running:
    p.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + _STOP_GRACE_S
  for p in running:
    try:
      p.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def _tail(path: pathlib.Path) -> str:
  lines = path.read_text(errors="replace").splitlines() if path.exists() else []
  return "\n".join(lines[-_TAIL_LINES:])


def launch(target: Sequence[str], *, processes: int, devices_per_process: int,
           port: int | None = None, log_dir: str | os.PathLike[str] | None = None) -> int:
  """Runs ``target`` (``["-m", module, *args]`` or ``[script, *args]``) as one run of
  ``processes`` processes of ``devices_per_process`` CPU devices each, and returns the exit
  status: 0 when every process succeeded, else the status of the first that failed (the others
  are then stopped; 128 + the signal number for a process a signal ended)."""
  for name, value in (("processes", processes), ("devices_per_process", devices_per_process)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")
  if not target or target[0] == "-m" and len(target) < 2:
    raise ValueError(f"target must be ['-m', module, *args] or [script, *args], got "
                     f"target={list(target)!r}")
  port = distributed.free_port() if port is None else port
  logs = pathlib.Path(tempfile.mkdtemp(prefix="momentum_jax_launch_") if log_dir is None
                      else log_dir)
  logs.mkdir(parents=True, exist_ok=True)
  if processes > 1:
    others = "process 1" if processes == 2 else f"processes 1-{processes - 1}"
    print(f"launch: {processes} processes × {devices_per_process} CPU devices, coordinator "
          f"localhost:{port}; the output of {others} goes to {logs}/process_<p>.log",
          file=sys.stderr, flush=True)
  command = [sys.executable, "-m", "momentum_jax.train.launch", _WORKER_FLAG, *target]
  started: list[subprocess.Popen] = []
  log_files = []
  try:
    for p in range(processes):
      env = process_env(p, processes, devices_per_process, port)
      if p == 0:
        started.append(subprocess.Popen(command, env=env))
      else:
        log_files.append(open(logs / f"process_{p}.log", "w"))  # noqa: SIM115  closed below
        started.append(subprocess.Popen(command, env=env, stdout=log_files[-1],
                                        stderr=subprocess.STDOUT))
    while True:
      codes = [p.poll() for p in started]
      failed = next((i for i, code in enumerate(codes) if code not in (None, 0)), None)
      if failed is not None:
        _stop(started)
        if failed > 0:
          print(f"launch: process {failed} exited with status {codes[failed]}; the end of "
                f"{logs / f'process_{failed}.log'}:\n{_tail(logs / f'process_{failed}.log')}",
                file=sys.stderr)
        return codes[failed] if codes[failed] > 0 else 128 - codes[failed]  # killed: 128 + signal
      if all(code == 0 for code in codes):
        return 0
      time.sleep(0.05)
  except KeyboardInterrupt:
    _stop(started)
    return 130
  finally:
    for f in log_files:
      f.close()


def _run_target(target: Sequence[str]) -> None:
  if target[0] == "-m":
    sys.argv = [target[1], *target[2:]]
    runpy.run_module(target[1], run_name="__main__", alter_sys=True)
  else:
    script = pathlib.Path(target[0])
    sys.argv = list(target)
    sys.path.insert(0, str(script.resolve().parent))
    runpy.run_path(str(script), run_name="__main__")


def _run_worker(target: Sequence[str]) -> None:
  """In a launched process: joins the run, then runs ``target`` as ``__main__``.

  A target that fails ends the process at once with its status (Python's report printed), not
  through JAX's exit handler, which would wait for the other processes at the run's shutdown
  barrier while they wait for this one in a collective.
  """
  distributed.initialize()
  try:
    _run_target(target)
  except SystemExit as error:
    if error.code in (None, 0):
      raise
    if not isinstance(error.code, int):
      print(error.code, file=sys.stderr)
    _exit_now(error.code if isinstance(error.code, int) else 1)
  except BaseException:  # noqa: BLE001  any failure of the target ends this process
    traceback.print_exc()
    _exit_now(1)


def _exit_now(status: int) -> None:
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == [_WORKER_FLAG]:
    _run_worker(argv[1:])
    return 0
  parser = _parser()
  options, target = split_command(argv)
  args = parser.parse_args(options)
  _check(args, parser)
  if target in ([], ["-m"]):
    parser.error("give the command to run: -m MODULE [ARGS ...] or SCRIPT [ARGS ...]")
  return launch(target, processes=args.processes, devices_per_process=args.devices_per_process,
                port=args.port, log_dir=args.log_dir)


if __name__ == "__main__":
  sys.exit(main())

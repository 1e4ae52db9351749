"""One run over several processes: ``jax.distributed`` with a coordinator, and the few things
that a run does on process 0 only.

JAX runs a multi-host job as one Python process per host (multi-controller SPMD): every process
runs the same program on its own devices, and a jitted computation over global arrays (a mesh
spanning every process's devices) is one collective computation. So P processes of D devices
each train exactly like one process of P·D devices: ``train`` builds the same
``(data, fsdp, tensor)`` mesh over ``jax.devices()`` (ordered by process), a synthetic batch is
drawn inside the jitted step, and a text batch is read in P slices (process p reads the p-th
slice of every global batch, ``TextDataset.iterator(shard_index=p, shard_count=P)``). Give the
run a mesh over all P·D devices (``TrainConfig.mesh_shape`` whose product is P·D); its
``TrainResult.params`` are then global arrays, which ``host_arrays`` fetches on every process.

Every process trains, evaluates and checkpoints: orbax's multi-host path, in which each process
writes the shards of the arrays it holds (a folder ``ocdbt.process_<p>`` per process in the
step's ``state``), process 0 writes the metadata and the JSON items (config, digest, data
position), and barriers keep the steps in order; on resume each process reads its shards back.
Process 0 alone writes the files a person reads: the workdir lock (``run_lock``), the metrics
JSONL and TensorBoard events (``MetricsLog`` keeps the records in memory on every process, so
``TrainResult.history`` is the same list everywhere), and an experiment's results and figures.

Launch on one machine (two processes of four CPU devices each: the multi-host path, proven
without a cluster; ``python -m momentum_jax.train.launch --help``)::

    python -m momentum_jax.train.launch --processes 2 --devices-per-process 4 \\
        -m momentum_jax.experiments.single_layer_induction --quick \\
        --config.train.mesh_shape="(1,8,1)"

On a cluster, start one process per host with the cluster's launcher and call
``initialize(coordinator_address="<host of process 0>:<port>", num_processes=P, process_id=p)``
(or ``initialize()`` with the environment variables below set) first thing in each, before
anything touches JAX; under Slurm, Open MPI or on Cloud TPU, ``jax.distributed.initialize()``
with no arguments finds all three itself.

On the CPU, the processes exchange collectives through gloo over TCP (JAX's default for
``jax_cpu_collectives_implementation``; ``initialize`` turns it back on where it was switched off).

Reference: JAX, "Introduction to multi-controller JAX (aka multi-process/multi-host JAX)"; the
same scheme as MaxText's and Levanter's trainers.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

#: The coordinator's ``host:port`` (JAX's own variable, read by ``jax.distributed.initialize``).
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
#: The number of processes of the run.
NUM_PROCESSES_ENV = "MOMENTUM_JAX_NUM_PROCESSES"
#: This process's index in ``[0, num_processes)``; process 0 runs the coordinator.
PROCESS_ID_ENV = "MOMENTUM_JAX_PROCESS_ID"
_CPU_COLLECTIVES = "jax_cpu_collectives_implementation"


def free_port(host: str = "localhost") -> int:
  """A TCP port on ``host`` that no socket is bound to now (the operating system's choice)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.bind((host, 0))
    return probe.getsockname()[1]


def _env_int(name: str, argument: str) -> int | None:
  text = os.environ.get(name)
  if text is None:
    return None
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"{argument} from the environment must be an int, got {name}={text!r}"
                     ) from None


def _check_address(coordinator_address: Any) -> None:
  host, colon, port = str(coordinator_address).rpartition(":")
  if (not isinstance(coordinator_address, str) or not colon or not host or not port.isdigit()
      or not 0 < int(port) < 65536):
    raise ValueError("coordinator_address must be 'host:port' with a port in [1, 65535], got "
                     f"coordinator_address={coordinator_address!r}")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 300) -> None:
  """Joins this process to a run of ``num_processes`` processes (``jax.distributed.initialize``).

  Call it in every process before anything else touches JAX. Process 0 starts the coordinator
  at ``coordinator_address``; every process connects to it and waits (up to ``timeout_s``) for
  the others, after which ``jax.devices()`` lists the devices of every process and
  ``jax.local_devices()`` this process's own. Calling it again with the same process count and
  id does nothing (a script run by ``momentum_jax.train.launch`` may call it too).

  Args:
    coordinator_address: ``"host:port"`` of process 0 (default: ``$JAX_COORDINATOR_ADDRESS``).
    num_processes: the number of processes, >= 1 (default: ``$MOMENTUM_JAX_NUM_PROCESSES``).
    process_id: this process's index in ``[0, num_processes)`` (default:
      ``$MOMENTUM_JAX_PROCESS_ID``).
    timeout_s: how long to wait for every process to connect.

  Raises:
    ValueError: a setting is missing (naming the argument and its environment variable) or
      malformed, or this process already joined a run of another process count or id.
    RuntimeError: JAX's backend started before this call (JAX's message).
  """
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  if coordinator_address is None:
    coordinator_address = os.environ.get(COORDINATOR_ENV)
  if num_processes is None:
    num_processes = _env_int(NUM_PROCESSES_ENV, "num_processes")
  if process_id is None:
    process_id = _env_int(PROCESS_ID_ENV, "process_id")
  for name, value, env in (("coordinator_address", coordinator_address, COORDINATOR_ENV),
                           ("num_processes", num_processes, NUM_PROCESSES_ENV),
                           ("process_id", process_id, PROCESS_ID_ENV)):
    if value is None:
      raise ValueError(f"{name} is not set: pass {name}= or set ${env} (given: {given})")
  _check_address(coordinator_address)
  if not isinstance(num_processes, int) or isinstance(num_processes, bool) or num_processes < 1:
    raise ValueError(f"num_processes must be an int >= 1, got num_processes={num_processes!r}")
  if (not isinstance(process_id, int) or isinstance(process_id, bool)
      or not 0 <= process_id < num_processes):
    raise ValueError(f"process_id must be an int in [0, num_processes={num_processes}), got "
                     f"process_id={process_id!r}")
  if jax.distributed.is_initialized():
    joined = (jax.process_count(), jax.process_index())
    if joined != (num_processes, process_id):
      raise ValueError(f"this process already joined a run as (num_processes, process_id)="
                       f"{joined}, not {(num_processes, process_id)}")
    return
  if jax.config.values.get(_CPU_COLLECTIVES) is None:  # off: no collectives between processes
    jax.config.update(_CPU_COLLECTIVES, "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=timeout_s)


def is_main_process() -> bool:
  """Whether this is process 0, the one that writes a run's metrics, results and figures (True
  in a run of one process)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process of the run reaches the barrier called ``name`` (the same name in
  each; nothing in a run of one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def each_process(flag: bool) -> list[bool]:
  """``flag`` as every process of the run has it, indexed by process (a collective: every
  process calls it at the same point)."""
  if jax.process_count() == 1:
    return [bool(flag)]
  gathered = multihost_utils.process_allgather(np.int32(bool(flag)))
  return [bool(f) for f in np.asarray(gathered).reshape(-1)]


def host_arrays(tree: Any) -> Any:
  """``tree`` with every array as a NumPy array of its global value, on every process.

  An array held in part by other processes (a parameter sharded over the whole mesh) is gathered
  (a collective: every process calls this with the same tree); the others are copied from this
  process's devices.
  """
  def fetch(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(fetch, tree)

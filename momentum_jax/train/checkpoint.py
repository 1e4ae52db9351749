"""Orbax checkpoints of a training run: ``{params, opt_state, step}`` plus the run's config.

Layout: ``workdir/checkpoints/<step>/{state, config}``; ``state`` is a ``StandardSave`` pytree,
``config`` a JSON record of what determines the trajectory (package version, model, optimisation,
task and, for a run started by an experiment, the experiment's name and resolved config), used to
refuse resuming a run under a different configuration.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

import momentum_jax
from momentum_jax.data import Task
from momentum_jax.nn import TransformerConfig
from momentum_jax.train.config import SCHEDULE_ONLY_FIELDS, TrainConfig

_MAX_TO_KEEP = 3


def run_signature(
    model_config: TransformerConfig,
    train_config: TrainConfig,
    task: Task,
    experiment: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """The JSON record saved with every checkpoint and compared on resume.

  It holds ``momentum_jax.__version__`` (``version``), the model, the train config without
  ``SCHEDULE_ONLY_FIELDS`` (run length and eval / log / save cadence, which may change between a
  run and its resumption), the task and, when given, the ``experiment`` record (the experiment CLI
  passes its name, the hash of its resolved config and that config).
  """
  train = {k: v for k, v in train_config.to_dict().items() if k not in SCHEDULE_ONLY_FIELDS}
  signature = {
      "version": momentum_jax.__version__,
      "model": model_config.to_dict(),
      "train": train,
      "task": {"name": type(task).__name__, **dataclasses.asdict(task)},
  }
  if experiment is not None:
    signature["experiment"] = dict(experiment)
  return json.loads(json.dumps(signature))  # the form it has after a JSON round trip


def signature_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """``"section.key: saved X vs current Y"`` for each differing leaf, sorted by key.

  The ``experiment`` sections are compared only when both signatures have one and they name the
  same experiment: another experiment may load a run's models (``head_detection`` reading a
  ``single_layer_induction`` run), and a plain ``train`` call may resume an experiment's run;
  those are checked on everything else.
  """
  def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in d.items():
      if isinstance(value, dict):
        flat.update(flatten(value, f"{prefix}{key}."))
      else:
        flat[f"{prefix}{key}"] = value
    return flat

  def show(flat: dict[str, Any], key: str) -> str:
    return repr(flat[key]) if key in flat else "<absent>"

  saved_experiment, current_experiment = saved.get("experiment"), current.get("experiment")
  if (saved_experiment is None or current_experiment is None
      or saved_experiment.get("name") != current_experiment.get("name")):
    saved = {k: v for k, v in saved.items() if k != "experiment"}
    current = {k: v for k, v in current.items() if k != "experiment"}
  saved_flat, current_flat = flatten(saved), flatten(current)
  return [
      f"{key}: saved {show(saved_flat, key)} vs current {show(current_flat, key)}"
      for key in sorted(saved_flat.keys() | current_flat.keys())
      if key not in saved_flat or key not in current_flat or saved_flat[key] != current_flat[key]
  ]


def checkpoint_manager(workdir: pathlib.Path) -> ocp.CheckpointManager:
  """An async ``CheckpointManager`` over ``workdir/checkpoints`` keeping the last few steps."""
  return ocp.CheckpointManager(
      workdir.absolute() / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=_MAX_TO_KEEP, create=True),
  )


def save(
    manager: ocp.CheckpointManager, step: int, state: dict[str, Any], signature: dict[str, Any]
) -> None:
  """Starts an async save of ``state`` (``{params, opt_state, step}``) and ``signature``."""
  manager.save(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(signature)
      ),
  )


def restore_signature(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The config record saved at ``step``."""
  return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def restore_state(
    manager: ocp.CheckpointManager, step: int, target: dict[str, Any]
) -> dict[str, Any]:
  """The ``{params, opt_state, step}`` saved at ``step``, shaped and sharded like ``target``."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
  )
  return restored["state"]

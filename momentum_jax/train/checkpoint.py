"""Orbax checkpoints of a training run: its state's checkpoint tree plus the run's config.

Layout: ``workdir/checkpoints/<step>/{state, config, digest[, data]}``; ``state`` is a
``StandardSave`` pytree (``TrainState.checkpoint_tree``: params, opt_state, rest, step),
``config`` a JSON record of what determines the trajectory (package version, model,
optimisation, task and, for a run started by an experiment, the experiment's name and resolved
config), used to refuse resuming a run under a different configuration; ``data`` the JSON
position of a data iterator, when the run has one; ``digest`` a checksum of each of the other
items.

The digest is there because not every damage to a file raises when it is read: a bit flipped in
the middle of an array's zstd-compressed data decodes, without any error, to different numbers.
``restore_latest`` recomputes it on what it restored and treats a mismatch like a read error: the
step is unreadable, set aside into ``workdir/corrupt_checkpoints`` with a warning, and the next
older step is tried.

``save`` refuses a state holding NaN or ±inf (``NonFiniteStateError``), so a diverged run never
replaces its last good checkpoint with one it could not resume from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

import momentum_jax
from momentum_jax import data
from momentum_jax.data import TextDataConfig
from momentum_jax.nn import TransformerConfig
from momentum_jax.train.config import PLACEMENT_FIELDS, SCHEDULE_ONLY_FIELDS, TrainConfig

_MAX_TO_KEEP = 3
CORRUPT_DIR = "corrupt_checkpoints"  # next to ``checkpoints``: where unreadable steps are moved
_CAUSE_CHARS = 500  # of the first line of an error's message, in a warning
# The digest's checksum of its own other entries, so that damage to the digest file is told
# apart from damage to what it describes.
_DIGEST_CHECKSUM = "digest"


class CorruptCheckpointWarning(UserWarning):
  """A saved step could not be read (or failed its digest) and was set aside."""


class NonFiniteStateError(ValueError):
  """A state to save holds NaN or ±inf; nothing was saved.

  Attributes:
    step: the step that was to be saved.
    arrays: the paths (``jax.tree_util.keystr``) of the arrays holding NaN or ±inf, in tree order.
  """

  def __init__(self, step: int, directory: os.PathLike[str], arrays: list[str]):
    super().__init__(
        f"refused to save step {step} in {directory}: {len(arrays)} array(s) of the state hold "
        f"NaN or ±inf, first {arrays[0]}")
    self.step = step
    self.arrays = arrays


class ConfigMismatchError(ValueError):
  """The newest readable checkpoint was saved under a different run signature.

  Attributes:
    step: the checkpoint's step.
    differences: ``signature_differences(saved, current)``, non-empty.
  """

  def __init__(self, step: int, directory: os.PathLike[str], differences: list[str]):
    super().__init__(
        f"the checkpoint at step {step} in {directory} was saved under a different config; "
        "differing keys:\n  " + "\n  ".join(differences))
    self.step = step
    self.differences = differences


class Restored(NamedTuple):
  """What ``restore_latest`` read from the newest readable step.

  Attributes:
    step: the step it was saved at.
    state: the saved pytree (``TrainState.checkpoint_tree``), shaped and sharded like the
      target.
    signature: the saved run signature.
    data_state: the saved data iterator position, or None when the step saved none.
    unverified: why the step could not be checked against its digest (the digest file itself is
      damaged), or None when it was checked or saved without one.
  """
  step: int
  state: dict[str, Any]
  signature: dict[str, Any]
  data_state: dict[str, Any] | None
  unverified: str | None = None


def run_signature(
    model_config: TransformerConfig,
    train_config: TrainConfig,
    data: Mapping[str, Any],
    experiment: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """The JSON record saved with every checkpoint and compared on resume.

  It holds ``momentum_jax.__version__`` (``version``), the model without its ``remat`` policy
  (recomputation keeps the values: a run may resume under another policy), the train config without
  ``SCHEDULE_ONLY_FIELDS`` (run length and eval / log / save cadence, which may change between a
  run and its resumption) and ``PLACEMENT_FIELDS`` (the mesh, the metric writers: a run may
  resume on another mesh), the ``data`` record (a synthetic task's or a text dataset's fields,
  as ``task``) and, when given, the ``experiment`` record (the experiment CLI passes its name,
  the hash of its resolved config and that config).
  """
  unsigned = (*SCHEDULE_ONLY_FIELDS, *PLACEMENT_FIELDS)
  train = {k: v for k, v in train_config.to_dict().items() if k not in unsigned}
  # Rematerialisation recomputes what it does not keep: the same values, so a run may resume
  # under another policy (like the mesh, it says how the step runs, not what it computes).
  model = {k: v for k, v in model_config.to_dict().items() if k != "remat"}
  signature = {
      "version": momentum_jax.__version__,
      "model": model,
      "train": train,
      "task": dict(data),
  }
  if experiment is not None:
    signature["experiment"] = dict(experiment)
  return json.loads(json.dumps(signature))  # the form it has after a JSON round trip


def signature_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """``"section.key: saved X vs current Y"`` for each differing leaf, sorted by key.

  A model, train or data field absent from ``saved`` and at its default in ``current`` is not a
  difference: the field was added after the run was saved, and its default keeps the behaviour
  the run had (so a new config field does not make old runs unresumable).

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
      if not _added_at_its_default(key, saved_flat, current_flat)
      and (key not in saved_flat or key not in current_flat or saved_flat[key] != current_flat[key])
  ]


def _field_defaults(config: type) -> dict[str, Any]:
  """The JSON form of each field default of the config dataclass ``config``."""
  return json.loads(json.dumps({
      f.name: f.default for f in dataclasses.fields(config)
      if f.default is not dataclasses.MISSING}))


def _section_config(section: str, current: dict[str, Any]) -> type | None:
  """The config dataclass of a signed section: the model's, the train config's, or the data's
  (``TextDataConfig`` for a text dataset, else the synthetic task's class named in ``task.name``)."""
  if section == "model":
    return TransformerConfig
  if section == "train":
    return TrainConfig
  if section == "task":
    name = current.get("task.name")
    config = TextDataConfig if name == "TextDataset" else getattr(data, str(name), None)
    return config if dataclasses.is_dataclass(config) else None
  return None


def _added_at_its_default(key: str, saved: dict[str, Any], current: dict[str, Any]) -> bool:
  """Whether ``key`` is a model, train or data field that the saved signature lacks (the field is
  newer than the run) and that holds its default now, so the run computes what it computed."""
  section, _, name = key.partition(".")
  config = _section_config(section, current)
  if key in saved or key not in current or config is None:
    return False
  defaults = _field_defaults(config)
  return name in defaults and defaults[name] == current[key]


def checkpoint_manager(workdir: pathlib.Path, *, create: bool = True) -> ocp.CheckpointManager:
  """An async ``CheckpointManager`` over ``workdir/checkpoints`` keeping the last few steps.

  ``create=False`` is for a reader: the folder is not created when it is missing (a reader checks
  that it exists first; reading must not leave folders behind at a mistyped path).
  """
  return ocp.CheckpointManager(
      workdir.absolute() / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=_MAX_TO_KEEP, create=create),
      item_handlers={
          "state": ocp.StandardCheckpointHandler(),
          "config": ocp.JsonCheckpointHandler(),
          "data": ocp.JsonCheckpointHandler(),
          "digest": ocp.JsonCheckpointHandler(),
      },
  )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: dict[str, Any],
    signature: dict[str, Any],
    data_state: dict[str, Any] | None = None,
) -> None:
  """Starts an async save of ``state``, ``signature``, ``data_state`` and their digest.

  ``state`` is a pytree of arrays (``TrainState.checkpoint_tree``), ``data_state`` a JSON dict (the
  data iterator's position), saved as the ``data`` item when given. The digest is computed here,
  before the save starts, in the same jitted reduction over the state's arrays (wherever they
  live) that checks every floating-point array is finite: a checkpoint never holds NaN or ±inf.

  Raises:
    NonFiniteStateError: a floating-point array of ``state`` holds NaN or ±inf (nothing saved).
  """
  state_digest, nonfinite = _state_summary(state)
  if nonfinite:
    raise NonFiniteStateError(step, manager.directory, nonfinite)
  digest: dict[str, Any] = {"state": state_digest, "config": _json_digest(signature)}
  items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(signature)}
  if data_state is not None:
    digest["data"] = _json_digest(data_state)
    items["data"] = ocp.args.JsonSave(data_state)
  digest[_DIGEST_CHECKSUM] = _json_digest(digest)
  manager.save(step, args=ocp.args.Composite(digest=ocp.args.JsonSave(digest), **items))


def restore_latest(
    manager: ocp.CheckpointManager,
    target: dict[str, Any],
    signature: dict[str, Any],
    *,
    warn: Callable[[str, type[Warning]], object] = warnings.warn,
    read_only: bool = False,
) -> Restored | None:
  """The newest readable step, restored onto ``target``'s shardings; None if no step is readable.

  ``target`` is a pytree like the saved state whose arrays carry the shardings to restore onto:
  the current mesh, whatever mesh wrote the checkpoint. Call this before the manager saves.

  Steps are tried newest first. A step is unreadable when reading one of its items raises
  anything (a truncated or missing file or item folder, undecodable array data, an array whose
  shape does not fit ``target``) or when an item differs from the digest saved with it (steps
  saved before digests existed are not checked). An unreadable step is moved to
  ``corrupt_checkpoints/<step>`` (``<step>.1``, ... when taken) next to the manager's directory,
  and ``warn`` gets a ``CorruptCheckpointWarning`` naming the step, the directory, the cause and
  the step restored instead, or saying that training starts from scratch. A damaged digest file
  (unreadable, or failing the checksum of its own entries) does not make a step unreadable: the
  step is restored unchecked and ``warn`` names the digest file. Moved, so that the
  manager sees only readable steps (orbax skips saves at steps up to an existing one, refuses to
  save at an existing step and counts every step against ``max_to_keep``); not deleted, so that
  a step set aside by a transient read error can be moved back. With ``read_only`` (a reader such
  as ``load_run``, which must change nothing on disk) an unreadable step is skipped and left where
  it is, and the warning says so.

  A different configuration is not corruption: if the newest step whose config reads and matches
  its digest has ``signature_differences`` from ``signature``, this raises ``ConfigMismatchError``
  and moves nothing (the state is not read, so a model of another shape is never mistaken for a
  damaged checkpoint).
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  unreadable: list[tuple[int, str]] = []
  restored = None
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = _read_step(manager, step, abstract, signature)
    except ConfigMismatchError:
      raise
    except Exception as error:  # whatever reading a damaged step raises
      unreadable.append((step, error_cause(error)))
    else:
      break
  if restored is not None and restored.unverified is not None:
    warn(f"checkpoint step {restored.step}: its digest file "
         f"{manager.directory / str(restored.step) / 'digest' / 'metadata'} is damaged "
         f"({restored.unverified}); the step's other items read without error and are restored "
         "unchecked", CorruptCheckpointWarning)
  instead = (f"falling back to step {restored.step}" if restored is not None
             else "no readable checkpoint is left, so training starts from scratch")
  for step, cause in unreadable:
    where = "left it in place" if read_only else f"moved it to {_set_aside(manager, step)}"
    warn(f"checkpoint step {step} in {manager.directory} is unreadable ({cause}); {where}; "
         f"{instead}", CorruptCheckpointWarning)
  if unreadable and not read_only:
    manager.reload()
  return restored


def read_signature(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The run signature saved at ``step`` (unchecked: ``restore_latest`` checks it)."""
  return _restore_item(manager, step, "config", ocp.args.JsonRestore())


class _UnreadableItem(Exception):
  """An item of a step that could not be read or differs from its digest."""


def _read_step(
    manager: ocp.CheckpointManager, step: int, abstract: Any, signature: dict[str, Any]
) -> Restored:
  """``step`` restored and checked; raises ``ConfigMismatchError``, or anything if unreadable."""
  saved_items = _read("metadata", lambda: manager.metadata(step).item_handlers) or {}
  saved_signature = _restore_item(manager, step, "config", ocp.args.JsonRestore())
  digest, unverified = _read_digest(manager, step) if "digest" in saved_items else (None, None)
  if digest is not None and digest.get("config") != _json_digest(saved_signature):
    raise _UnreadableItem("config: differs from the digest saved with it")
  differences = signature_differences(saved_signature, signature)
  if differences:
    raise ConfigMismatchError(step, manager.directory, differences)
  state = _restore_item(manager, step, "state", ocp.args.StandardRestore(abstract))
  has_data = "data" in (saved_items if digest is None else digest)
  data_state = _restore_item(manager, step, "data", ocp.args.JsonRestore()) if has_data else None
  if digest is not None:
    if has_data and digest["data"] != _json_digest(data_state):
      raise _UnreadableItem("data: differs from the digest saved with it")
    saved, restored = digest.get("state", {}), _state_digest(state)
    differing = sorted(k for k in saved.keys() | restored.keys() if saved.get(k) != restored.get(k))
    if differing:
      raise _UnreadableItem(
          f"state: {len(differing)} array(s) differ from the digest saved with them, first "
          f"{differing[0]}")
  return Restored(step, state, saved_signature, data_state, unverified)


def _read_digest(manager: ocp.CheckpointManager,
                 step: int) -> tuple[dict[str, Any] | None, str | None]:
  """``(digest, None)``, or ``(None, why)`` when the digest file is unreadable or fails the
  checksum of its own entries (digests written before that checksum existed are taken as read)."""
  try:
    digest = _restore_item(manager, step, "digest", ocp.args.JsonRestore())
  except _UnreadableItem as error:
    return None, str(error)
  if not isinstance(digest, dict):
    return None, f"digest: a {type(digest).__name__}, not a JSON object"
  own = {k: v for k, v in digest.items() if k != _DIGEST_CHECKSUM}
  if _DIGEST_CHECKSUM in digest and digest[_DIGEST_CHECKSUM] != _json_digest(own):
    return None, "digest: its entries differ from its own checksum"
  return own, None


def _restore_item(
    manager: ocp.CheckpointManager, step: int, name: str, args: ocp.args.CheckpointArgs
) -> Any:
  """Item ``name`` of ``step``."""
  return _read(name, lambda: manager.restore(step, args=ocp.args.Composite(**{name: args}))[name])


def _read(what: str, read: Callable[[], Any]) -> Any:
  """``read()``; whatever it raises is re-raised as an ``_UnreadableItem`` naming ``what``."""
  try:
    return read()
  except Exception as error:  # any failure to read makes the step unreadable
    raise _UnreadableItem(f"{what}: {error_cause(error)}") from error


def error_cause(error: Exception) -> str:
  """``"Type: first line of the message"`` of the innermost exception ``error`` was raised from.

  The innermost one says what went wrong (orbax wraps a TensorStore ``ValueError`` such as
  ``ZSTD_decompressStream() failed`` in an ``Exception`` that only names the array index read);
  an ``_UnreadableItem`` is shown as its own text.
  """
  if isinstance(error, _UnreadableItem):
    return str(error)
  seen = {id(error)}
  while True:
    inner = error.__cause__ if error.__cause__ is not None else (
        None if error.__suppress_context__ else error.__context__)
    if inner is None or id(inner) in seen:
      break
    error = inner
    seen.add(id(error))
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  first = lines[0] if lines else ""
  if len(first) > _CAUSE_CHARS:
    first = first[:_CAUSE_CHARS] + "..."
  return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _set_aside(manager: ocp.CheckpointManager, step: int) -> os.PathLike[str]:
  """Moves ``step``'s folder into ``corrupt_checkpoints`` next to the manager's directory."""
  corrupt = manager.directory.parent / CORRUPT_DIR
  corrupt.mkdir(parents=True, exist_ok=True)
  destination, n = corrupt / str(step), 0
  while destination.exists():
    n += 1
    destination = corrupt / f"{step}.{n}"
  (manager.directory / str(step)).rename(destination)
  return destination


def _json_digest(value: Any) -> str:
  """SHA-256 of ``value``'s JSON text, keys sorted (the same after a JSON round trip)."""
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _words(x: jax.Array) -> jax.Array:
  """The bits of ``x`` as a flat ``uint32`` vector: narrower elements widened, wider ones split."""
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  bits = 8 * x.dtype.itemsize
  if bits < 32:
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}")).astype(jnp.uint32).ravel()
  return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()


@jax.jit
def _leaf_summaries(leaves: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
  """Per array, its digest ``sum_i words[i] * (2i + 1) mod 2**32`` (any one flipped bit changes
  it) and whether it is finite (true for integer arrays).

  Integer sums do not depend on the order of addition, so the digest of an array is the same
  whatever its sharding.
  """
  def digest(x: jax.Array) -> jax.Array:
    words = _words(x)
    weights = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1
    return jnp.sum(words * weights, dtype=jnp.uint32)

  def finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)

  leaves = [jnp.asarray(x) for x in leaves]
  return [digest(x) for x in leaves], [finite(x) for x in leaves]


def _state_summary(state: Any) -> tuple[dict[str, int], list[str]]:
  """``({keystr(path): digest}, [keystr(path) of each array holding NaN or ±inf])`` of the
  arrays of ``state``."""
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  digests, finite = jax.device_get(_leaf_summaries([leaf for _, leaf in flat]))
  paths = [jax.tree_util.keystr(path) for path, _ in flat]
  return ({path: int(value) for path, value in zip(paths, digests)},
          [path for path, ok in zip(paths, finite) if not ok])


def _state_digest(state: Any) -> dict[str, int]:
  """``{keystr(path): digest}`` over the arrays of ``state``."""
  return _state_summary(state)[0]

"""The command line every experiment shares.

    python -m momentum_jax.experiments.<name> [--quick] [--output-dir DIR] [--fresh]
        [--no-progress] [--preset NAME] [--config.PATH=VALUE ...]

Where outputs go: ``--output-dir`` (default ``runs/<name>``) is the output root. A full run writes
into it, a ``--quick`` run into ``<output-dir>/quick`` and a ``--preset NAME`` run (another
configuration an experiment offers, such as a GPU-scale one) into ``<output-dir>/NAME``, so they
never meet; each model trains in
``<run folder>/<model name>``, which is where another experiment reads it from
(``head_detection --output-dir runs/single_layer_induction``).

A run that diverges, or whose checkpoint cannot be saved (a full disk), ends with one line
``<command>: error: <message>`` and status 1; the message names the step and the newest
checkpoint, which a rerun resumes from.

One run per folder: the experiment holds an exclusive lock on its run folder for the rest of its
process (``momentum_jax.train.run_lock``; the operating system releases it however the process
ends), and ``train`` locks each model folder in it, so a second run into the same folder exits at
once (status 2) naming the folder and the process id that holds it. In a run of several processes
(``python -m momentum_jax.train.launch ... -m momentum_jax.experiments.<name>``), process 0 takes
the locks, removes the folders of ``--fresh`` and writes the results and figures; the others wait
for it, then train and compute alongside it and write nothing.

Resuming is the default: ``train`` continues each model from its latest checkpoint and prints a
line saying so, or that the model had finished and is skipped. ``--fresh`` removes the model
folders of this run (and with them their checkpoints) first, saying which.

Config overrides, in the style of ml_collections / big_vision: ``--config.train.steps=300`` sets
one field of the frozen config dataclasses that the experiment's ``config.py``
``get_config(quick)`` returns (applied with ``dataclasses.replace``, the innermost first). A
field that holds ``(name, config)`` pairs (``models``, ``runs``, ``tasks``) takes the field of one
entry (``--config.models.softmax_1L.d_model=64``) or of every entry
(``--config.models.d_model=64``).
Values are Python literals (``ast.literal_eval``), anything else is a string; each is checked
against the field's annotation. The overrides, the resolved config and its hash are written to
the experiment's results file, and the name and hash go into every checkpoint's signature.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import hashlib
import json
import pathlib
import re
import shutil
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from momentum_jax.train.checkpoint_writer import CheckpointSaveError
from momentum_jax.train.config import SCHEDULE_ONLY_FIELDS, TrainConfig
from momentum_jax.train.distributed import barrier, is_main_process
from momentum_jax.train.divergence import TrainingDivergedError
from momentum_jax.train.run_lock import RunFolderLockedError, RunLock, hold_until_exit

QUICK_FOLDER = "quick"
OVERRIDE_PREFIX = "--config."
# Errors that end a run for a reason the message states in full (a diverged loss, a failed
# checkpoint save, a folder another run holds): the command prints the message, not a traceback.
RUN_ENDING_ERRORS = (TrainingDivergedError, CheckpointSaveError, RunFolderLockedError)


class ConfigOverrideError(ValueError):
  """An override whose path is not a field of the config, or whose value has the wrong type."""


@dataclasses.dataclass(frozen=True)
class ExperimentRun:
  """A parsed command line and the config it resolves to.

  Attributes:
    name: the experiment (its module name under ``momentum_jax.experiments``).
    quick: ``--quick`` was given.
    progress: show progress bars (no ``--no-progress``).
    out_dir: the run folder: the output root, or ``<output root>/quick`` (created).
    config: ``get_config(quick)`` with the overrides applied.
    overrides: ``{dotted path: value}`` in command-line order.
  """

  name: str
  quick: bool
  progress: bool
  out_dir: pathlib.Path
  config: Any
  overrides: dict[str, Any]

  @functools.cached_property
  def config_hash(self) -> str:
    """Hash of the resolved config without the schedule-only ``TrainConfig`` fields."""
    return json_hash(config_to_json(self.config, schedule=False))

  @property
  def experiment(self) -> dict[str, Any]:
    """The record ``train(..., experiment=)`` saves in the checkpoint signature."""
    return {"name": self.name, "config_hash": self.config_hash,
            "config": config_to_json(self.config, schedule=False)}

  def record(self) -> dict[str, Any]:
    """``{"overrides", "config", "config_hash"}`` for the experiment's results file."""
    return {"overrides": config_to_json(self.overrides), "config": config_to_json(self.config),
            "config_hash": self.config_hash}


def model_names(config: Any) -> list[str]:
  """The names in the config's field of ``(name, config)`` pairs that it trains, ``models`` or
  else ``runs``: the model folders of the run."""
  pairs = config.models if hasattr(config, "models") else config.runs
  return [name for name, _ in pairs]


def start_experiment(argv: Sequence[str] | None, doc: str | None, name: str,
                     get_config: Callable[[bool], Any], *,
                     workdirs: Callable[[Any], Iterable[str]] = model_names,
                     presets: Mapping[str, Callable[[], Any]] | None = None) -> ExperimentRun:
  """Parses the command line, resolves the config and prepares the run folder: creates it and
  takes its lock for the rest of this process (``run_lock.hold_until_exit``), then, with
  ``--fresh``, removes the model folders.

  Args:
    argv: the arguments (``None``: ``sys.argv[1:]``).
    doc: the ``__main__`` module's docstring; its first paragraph is the ``--help`` description.
    name: the experiment's module name, e.g. ``"single_layer_induction"``.
    get_config: the experiment's ``get_config(quick)``.
    workdirs: the model folders (names under the run folder) that the resolved config trains
      (default: ``model_names``); ``--fresh`` removes these.
    presets: other named configurations (e.g. a GPU-scale one), chosen with ``--preset NAME``
      instead of ``get_config``'s; a preset's run folder is ``<output root>/<NAME>``.

  Returns:
    The run. A malformed override exits through ``argparse`` (status 2) with a message naming
    it; so does a run folder that another run holds (naming the folder and the holder's process
    id) or that cannot be made because a file is in the way.
  """
  parser = _parser(doc, name, get_config(False), presets or {})
  args, rest = parser.parse_known_args(argv)
  preset = getattr(args, "preset", None)
  if preset is not None and args.quick:
    parser.error(f"--quick and --preset {preset} exclude each other")
  try:
    overrides = parse_overrides(rest)
    config = presets[preset]() if preset is not None else get_config(args.quick)
    config = apply_overrides(config, overrides)
  except ConfigOverrideError as error:
    parser.error(str(error))
  root = pathlib.Path(args.output_dir)
  out_dir = root / QUICK_FOLDER if args.quick else root / preset if preset else root
  try:
    if is_main_process():  # of a run of several processes: the others write nothing here
      hold_until_exit(out_dir)
      if args.fresh:
        _remove_workdirs(out_dir, workdirs(config))
  except (RunFolderLockedError, NotADirectoryError) as error:
    parser.error(str(error))
  barrier("start_experiment")  # the other processes train once process 0 holds the folder
  _end_run_errors_in_one_line(parser.prog)
  return ExperimentRun(name=name, quick=args.quick, progress=not args.no_progress,
                       out_dir=out_dir, config=config, overrides=overrides)


def _end_run_errors_in_one_line(prog: str) -> None:
  """Makes an uncaught run-ending error (``RUN_ENDING_ERRORS``) print ``prog: error: message``
  instead of a traceback; any other error keeps Python's own report."""
  previous = sys.excepthook
  if getattr(previous, "prints_run_errors", False):
    return

  def excepthook(kind, error, traceback):
    if isinstance(error, RUN_ENDING_ERRORS):
      print(f"{prog}: error: {error}", file=sys.stderr)
    else:
      previous(kind, error, traceback)

  excepthook.prints_run_errors = True
  sys.excepthook = excepthook


def describe(doc: str | None) -> str:
  """The first paragraph of ``doc`` as plain text: one line, RST roles and literals unwrapped."""
  paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
  paragraph = re.sub(r":[\w-]+(?::[\w-]+)?:`~?([^`]*)`", r"\1", paragraph)
  return re.sub(r"``([^`]*)``|`([^`]*)`", lambda m: m.group(1) or m.group(2) or "", paragraph)


def _parser(doc: str | None, name: str, default_config: Any,
            presets: Mapping[str, Callable[[], Any]]) -> argparse.ArgumentParser:
  fields = ", ".join(f.name for f in dataclasses.fields(default_config))
  epilog = (
      f"config overrides: {OVERRIDE_PREFIX}PATH=VALUE sets a field of the config of "
      f"config.py's get_config, e.g. {OVERRIDE_PREFIX}train.steps=300 (top-level fields: "
      f"{fields}). In a field of (name, config) pairs, PATH names one entry (models.<name>."
      "<field>) or every entry (models.<field>). VALUE is a Python literal, else a string.")
  parser = argparse.ArgumentParser(
      prog=f"python -m momentum_jax.experiments.{name}", description=describe(doc), epilog=epilog,
      usage=(f"%(prog)s [-h] [--quick] [--output-dir DIR] [--fresh] [--no-progress] "
             + ("[--preset NAME] " if presets else "") + f"[{OVERRIDE_PREFIX}PATH=VALUE ...]"))
  parser.add_argument("--quick", action="store_true",
                      help="tiny smoke configuration, written to DIR/quick")
  parser.add_argument("--output-dir", default=f"runs/{name}", metavar="DIR",
                      help="output root: checkpoints, metrics, results and plots (default: "
                           "%(default)s)")
  parser.add_argument("--fresh", action="store_true",
                      help="start over: remove this run's model folders (checkpoints) first")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  if presets:
    parser.add_argument("--preset", choices=sorted(presets), default=None,
                        help="another configuration of config.py, written to DIR/PRESET")
  return parser


def _remove_workdirs(out_dir: pathlib.Path, names: Iterable[str]) -> None:
  existing = [out_dir / name for name in names if (out_dir / name).exists()]
  if not existing:
    print(f"--fresh: no model folders to remove in {out_dir}")
  with contextlib.ExitStack() as locks:
    for path in existing:  # none is removed while another run trains in one of them
      locks.enter_context(RunLock(path))
    for path in existing:
      print(f"--fresh: removing {path}")
      shutil.rmtree(path)


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
  """``{path: value}`` from ``--config.PATH=VALUE`` arguments; the value is ``ast.literal_eval``
  of the text, or the text itself when that fails. Any other argument is an error."""
  overrides = {}
  for arg in args:
    if not arg.startswith(OVERRIDE_PREFIX):
      raise ConfigOverrideError(f"unrecognized argument: {arg}")
    path, equals, text = arg[len(OVERRIDE_PREFIX):].partition("=")
    if not equals or not path:
      raise ConfigOverrideError(f"{arg}: write an override as {OVERRIDE_PREFIX}PATH=VALUE")
    try:
      overrides[path] = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
      overrides[path] = text
  return overrides


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
  """``config`` with each ``{dotted path: value}`` applied in order by ``dataclasses.replace``.

  Raises:
    ConfigOverrideError: a path that names no field (with the allowed keys), a value of the
      wrong type (with the field's type), or a value the config's own validation rejects.
  """
  for path, value in overrides.items():
    config = _replace(config, path.split("."), value, path, prefix="")
  return config


def json_hash(value: Any) -> str:
  """The first 16 hex digits of the SHA-256 of ``value`` as JSON with sorted keys."""
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def config_to_json(value: Any, *, schedule: bool = True) -> Any:
  """A JSON form of a config: dataclasses as dicts (``to_dict`` where they have one), fields of
  ``(name, config)`` pairs as ``{name: config}``; ``schedule=False`` leaves out the
  ``TrainConfig`` fields that may change when a run resumes (``SCHEDULE_ONLY_FIELDS``)."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    fields = (value.to_dict() if hasattr(value, "to_dict")
              else {f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if not schedule and isinstance(value, TrainConfig):
      fields = {k: v for k, v in fields.items() if k not in SCHEDULE_ONLY_FIELDS}
    return {k: config_to_json(v, schedule=schedule) for k, v in fields.items()}
  if _is_named_pairs(value):
    return {name: config_to_json(entry, schedule=schedule) for name, entry in value}
  if isinstance(value, Mapping):
    return {str(k): config_to_json(v, schedule=schedule) for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    return [config_to_json(v, schedule=schedule) for v in value]
  return value


def _is_named_pairs(value: Any) -> bool:
  return (isinstance(value, tuple) and bool(value)
          and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                  and dataclasses.is_dataclass(p[1]) for p in value))


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
  try:
    return typing.get_type_hints(cls)
  except Exception:  # noqa: BLE001  an annotation that does not resolve: use the values' types
    return {}


def _replace(node: Any, parts: list[str], value: Any, path: str, prefix: str) -> Any:
  """``node`` with the field at ``parts`` set to ``value``; ``prefix`` is the path walked so far."""
  where = prefix or "the config"
  if not dataclasses.is_dataclass(node):
    raise ConfigOverrideError(
        f"unknown config path {path!r}: {where} is a {type(node).__name__} value, not a config "
        "with fields")
  fields = [f.name for f in dataclasses.fields(node) if f.init]
  key, rest = parts[0], parts[1:]
  if key not in fields:
    raise ConfigOverrideError(
        f"unknown config path {path!r}: {where} ({type(node).__name__}) has no field {key!r}; "
        f"allowed keys: {', '.join(fields)}")
  here = f"{prefix}.{key}" if prefix else key
  current = getattr(node, key)
  if not rest:
    hint = _type_hints(type(node)).get(key, Any if current is None else type(current))
    new = _typed(value, hint, path)
  elif _is_named_pairs(current):
    new = _replace_pairs(current, rest, value, path, here)
  else:
    new = _replace(current, rest, value, path, here)
  try:
    return dataclasses.replace(node, **{key: new})
  except (TypeError, ValueError) as error:
    raise ConfigOverrideError(f"{OVERRIDE_PREFIX}{path}={value!r}: {error}") from error


def _replace_pairs(pairs: tuple, parts: list[str], value: Any, path: str, prefix: str) -> tuple:
  """``(name, config)`` pairs with the override applied to the entry ``parts`` starts with (a
  name may hold dots), or to every entry."""
  names = [name for name, _ in pairs]
  joined = ".".join(parts)
  if joined in names:
    raise ConfigOverrideError(
        f"config path {path!r} names a whole entry of {prefix}; override its fields, e.g. "
        f"{OVERRIDE_PREFIX}{prefix}.{joined}.<field>")
  chosen = max((n for n in names if joined.startswith(n + ".")), key=len, default=None)
  if chosen is not None:
    parts = parts[len(chosen.split(".")):]
  for name, entry in pairs:
    if (chosen is None or name == chosen) and dataclasses.is_dataclass(entry) and parts[0] not in {
        f.name for f in dataclasses.fields(entry) if f.init}:
      raise ConfigOverrideError(
          f"unknown config path {path!r}: {prefix}.{name} ({type(entry).__name__}) has no field "
          f"{parts[0]!r}; {prefix}.<field> sets the field of every entry, "
          f"{prefix}.<name>.<field> of one; names: {', '.join(names)}; fields of {name}: "
          + ", ".join(f.name for f in dataclasses.fields(entry) if f.init))
  return tuple(
      (name, _replace(entry, parts, value, path, f"{prefix}.{name}")
       if chosen is None or name == chosen else entry)
      for name, entry in pairs)


def _typed(value: Any, hint: Any, path: str) -> Any:
  ok, converted = _conform(value, hint)
  if not ok:
    shown = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
    raise ConfigOverrideError(
        f"{OVERRIDE_PREFIX}{path}={value!r}: expected {shown}, got {type(value).__name__}")
  return converted


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
  """``(whether value fits the annotation hint, value converted to it)``: an int fits a float
  field (as a float), a list a tuple field (as a tuple); an annotation this does not understand
  accepts anything and leaves the check to the config's own validation."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if hint is Any or hint is object:
    return True, value
  if origin in (typing.Union, types.UnionType):
    for arg in args:
      ok, converted = _conform(value, arg)
      if ok:
        return True, converted
    return False, value
  if hint is type(None) or hint is None:
    return value is None, value
  if hint is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return ok, float(value) if ok else value
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool), value
  if origin is tuple:
    if not isinstance(value, (tuple, list)):
      return False, value
    if not args:
      return True, tuple(value)
    items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
    if len(items) != len(value):
      return False, value
    converted = [_conform(v, a) for v, a in zip(value, items)]
    return all(ok for ok, _ in converted), tuple(v for _, v in converted)
  if origin is not None:
    return isinstance(value, origin), value
  if isinstance(hint, type):
    return isinstance(value, hint), value
  return True, value


"""The recipe every experiment's ``__main__`` follows, so that it holds only what is its own.

    run = start_experiment(argv, __doc__, "single_layer_induction", get_config)
    rows = train_models(run, each_model(config.models, config.train), config.task, row)
    print_table("model", 22, COLUMNS, rows)
    finish(run, {"results": rows, ...}, {"accuracy.png": figure})

``train_models`` trains each named model in ``<run folder>/<name>`` through
``momentum_jax.train.train`` (resuming from its latest checkpoint, or skipping it when it has
finished; ``--fresh`` removed the folders first) and keeps the row the experiment makes of each
result. ``finish`` writes the results file (the experiment's summary with ``quick`` and the
command line's record: overrides, resolved config and its hash) and saves the figures, which
are built with matplotlib's object API (``new_figure``): no pyplot, no backend to switch. An
experiment whose units of work are not ``train`` runs saves and resumes them with
``cached_unit``; one that steps its own models (a vmapped ensemble, an ahead-of-time compiled
step) builds the step from ``momentum_jax.train.step``'s ``token_loss`` and ``optimizer_step``.

In a run of several processes (``python -m momentum_jax.train.launch``), every process trains
and computes every row alike; process 0 alone writes the results, the figures and the units.
"""

from __future__ import annotations

import json
import platform
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
from matplotlib.figure import Figure

from momentum_jax.data import Task, TextDataset
from momentum_jax.experiments.cli import ExperimentRun, config_to_json, json_hash
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, TrainResult, train
from momentum_jax.train.distributed import is_main_process

#: The results file ``finish`` writes in the run folder, unless told another name.
RESULTS_FILE = "results.json"
#: The file in a unit's folder holding what ``cached_unit`` computed.
UNIT_FILE = "unit.json"
#: The resolution of the saved figures.
FIGURE_DPI = 120


class Trained(NamedTuple):
  """One trained model of an experiment, as its row function receives it.

  Attributes:
    name: the model's name (its folder under the run folder).
    model: its ``TransformerConfig``.
    train: its ``TrainConfig``.
    result: what ``train`` returned.
    seconds: the wall time of the ``train`` call (resumption or skip included).
  """

  name: str
  model: TransformerConfig
  train: TrainConfig
  result: TrainResult
  seconds: float


def each_model(models: Iterable[tuple[str, TransformerConfig]],
               train_config: TrainConfig) -> list[tuple[str, TransformerConfig, TrainConfig]]:
  """``(name, model, train_config)`` for named models trained on one budget."""
  return [(name, model, train_config) for name, model in models]


def each_run(model: TransformerConfig, runs: Iterable[tuple[str, TrainConfig]]
             ) -> list[tuple[str, TransformerConfig, TrainConfig]]:
  """``(name, model, train_config)`` for one model trained under named ``TrainConfig``\\s."""
  return [(name, model, train_config) for name, train_config in runs]


def train_models(run: ExperimentRun,
                 models: Iterable[tuple[str, TransformerConfig, TrainConfig]],
                 data: Task | TextDataset, row: Callable[[Trained], dict]) -> dict[str, dict]:
  """``{name: row(trained)}``: each ``(name, model, train_config)`` trained on ``data`` in
  ``run.out_dir / name`` (resumed or skipped as its checkpoints say), in order."""
  rows = {}
  for name, model, train_config in models:
    start = time.perf_counter()
    result = train(model, train_config, data, run.out_dir / name, progress=run.progress,
                   experiment=run.experiment)
    rows[name] = row(Trained(name, model, train_config, result, time.perf_counter() - start))
  return rows


def cached_unit(run: ExperimentRun, name: str, compute: Callable[[], dict],
                identity: Any = None) -> dict:
  """``compute()`` with ``seconds`` and ``config_hash`` added, saved in
  ``<run folder>/<name>/unit.json``; read back instead when it was saved under the same hash
  (``--fresh`` removes it), refused when under another.

  The hash is the run's config hash, or with ``identity`` (a config, or a JSON-ready structure
  of configs: what the unit's result depends on) the hash of ``identity`` alone: then a run whose
  config differs elsewhere (fewer depths, another bootstrap) reads the unit back, so a sweep can
  be run in parts. For experiments whose units of work are not ``train`` runs (and so have no
  checkpoints).
  """
  unit_hash = run.config_hash if identity is None else json_hash(config_to_json(identity))
  path = run.out_dir / name / UNIT_FILE
  if path.exists():
    saved = json.loads(path.read_text())
    if saved["config_hash"] != unit_hash:
      raise SystemExit(f"{path} was computed under config {saved['config_hash']}, this run's "
                       f"is {unit_hash}: pass --fresh to recompute it, or another "
                       "--output-dir")
    print(f"{name}: finished earlier ({saved['seconds']:.0f} s), read from {path}")
    return saved
  start = time.perf_counter()
  unit = compute()
  unit.update(seconds=time.perf_counter() - start, config_hash=unit_hash)
  # In a run of several processes, process 0 writes, by a rename: the others may be reading it.
  if is_main_process():
    path.parent.mkdir(parents=True, exist_ok=True)
    written = path.with_name(f".{UNIT_FILE}.written")
    written.write_text(json.dumps(unit))
    written.replace(path)
  if run.progress:
    print(f"{name}: {unit['seconds']:.0f} s")
  return unit


def series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
  """``(steps, values)`` of the metric ``key`` over the records of a run's history that hold it."""
  records = [r for r in history if key in r]
  return [r["step"] for r in records], [r[key] for r in records]


def hardware() -> dict[str, Any]:
  """The device, device count, host and jax version a run's figures come from."""
  device = jax.devices()[0]
  return {"platform": device.platform, "device_kind": device.device_kind,
          "device_count": jax.device_count(), "host": platform.machine(),
          "jax": jax.__version__}


#: A table column: (header, format spec with its width, the row's key or a function of
#: the row).
Column = tuple[str, str, str | Callable[[dict], Any]]


def print_table(title: str, width: int, columns: Sequence[Column],
                rows: Mapping[str, dict]) -> None:
  """A header line and one line per row: the name left-aligned in ``width`` characters, then
  each column's value formatted with its spec, right-aligned (``("loss", "8.3f", "eval_loss")``
  prints ``f"{row['eval_loss']:>8.3f}"`` under ``f"{'loss':>8}"``); a header with a line break
  takes two header lines."""
  widths = [re.match(r"[+ -]?(\d*)", spec).group(1) for _, spec, _ in columns]
  headers = [header.split("\n") for header, _, _ in columns]
  for line in range(max(map(len, headers))):
    print((f"{title if line == 0 else '':<{width}}" + "".join(
        f"{lines[line] if line < len(lines) else '':>{w}}" for lines, w in zip(headers, widths)
    )).rstrip())
  for name, r in rows.items():
    cells = (format(cell(r) if callable(cell) else r[cell], ">" + spec)
             for _, spec, cell in columns)
    print(f"{name:<{width}}" + "".join(cells))


def new_figure(rows: int = 1, cols: int = 1, *, figsize: tuple[float, float],
               **subplots: Any) -> tuple[Figure, Any]:
  """``(figure, axes)``: a ``matplotlib.figure.Figure`` with ``fig.subplots(rows, cols)``."""
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(rows, cols, **subplots)


# What a --quick run prints last: its numbers are a smoke test's, not the experiment's result.
QUICK_NOTE = ("--quick is a smoke test of a tiny configuration: its numbers say the pipeline runs, "
              "not what the experiment finds. Targets, verdicts and the RESULT recorded in the "
              "experiment's config.py apply to the full run (the same command without --quick).")


def finish(run: ExperimentRun, summary: dict[str, Any], figures: Mapping[str, Figure],
           results_file: str = RESULTS_FILE) -> dict[str, Any]:
  """Writes ``summary`` with ``quick`` and ``run.record()`` to ``run.out_dir / results_file``
  and each figure (laid out tightly, at ``FIGURE_DPI``) to ``run.out_dir / <its name>``;
  prints what it wrote (and, for a ``--quick`` run, ``QUICK_NOTE``) and returns the written
  summary. In a run of several processes, process 0 alone writes and prints; every process
  returns the summary."""
  summary = {**summary, "quick": run.quick, **run.record()}
  if not is_main_process():  # of a run of several processes: process 0 writes
    return summary
  (run.out_dir / results_file).write_text(json.dumps(summary, indent=2))
  for name, fig in figures.items():
    fig.tight_layout()
    fig.savefig(run.out_dir / name, dpi=FIGURE_DPI)
  print(f"wrote {run.out_dir / results_file}" + "".join(f", {name}" for name in figures))
  if run.quick:
    print(QUICK_NOTE)
  return summary

"""Trains the softmax and sigmoid LMs of ``config.py`` on the Markov–Zipf language and measures
the first-token attention sink (Sink_1, ε = 0.3) over training; writes a table, JSON and plots.

    python -m momentum_jax.experiments.sink_emergence [--quick] [--fresh] [...]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from momentum_jax.analysis import plot_sink_heatmap, sink_alpha, sink_rate
from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.recipe import finish, new_figure
from momentum_jax.experiments.sink_emergence.config import get_config
from momentum_jax.train import train
from momentum_jax.train.distributed import is_main_process

# Per model folder: the Sink_1, eval loss and α_1 measured at each step, so that a rerun does not
# need the (deleted) intermediate checkpoints.
MEASUREMENTS_FILE = "sink_measurements.json"


@functools.partial(jax.jit, static_argnames=("graphdef", "num_layers", "epsilon"))
def _measure(state: nnx.State, tokens_BxT: jax.Array, *, graphdef: nnx.GraphDef,
             num_layers: int, epsilon: float) -> dict[str, jax.Array]:
  """Sink_1^ε over (sequence, layer, head) and the batch-mean α_1 per layer and head."""
  hooks = tuple(f"blocks.{layer}.attn.hook_pattern" for layer in range(num_layers))
  _, cache = nnx.merge(graphdef, state).run_with_cache(tokens_BxT, hooks)
  alpha_LxBxNxT = jnp.stack([sink_alpha(cache[name]) for name in hooks])
  return {"sink_1": sink_rate(alpha_LxBxNxT, epsilon)[0],
          "alpha_1_LxN": alpha_LxBxNxT[..., 0].mean(axis=1)}


def _plot_curves(results: dict[str, dict], epsilon: float):
  fig, ax = new_figure(figsize=(7, 4.5))
  for name, r in results.items():
    ax.plot(r["steps"], r["sink_1"], marker="o", markersize=3, label=name)
  ax.set(xlabel="training step", ylabel=f"Sink_1 (% of sequence·layer·head with α > {epsilon:g})",
         ylim=(-2, 102), title="First-token attention sink over training")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return fig


def _measurements(workdir: pathlib.Path) -> dict[int, dict]:
  """The measurements a previous run of this model saved, by step (``{}`` if none)."""
  path = workdir / MEASUREMENTS_FILE
  if not path.exists():
    return {}
  return {int(step): record for step, record in json.loads(path.read_text()).items()}


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "sink_emergence", get_config)
  config, out_dir = run.config, run.out_dir
  probe = config.task.sample(jax.random.key(config.probe_seed), config.probe_batch).tokens
  schedule = sorted({*range(config.measure_every, config.train.steps, config.measure_every),
                     config.train.steps})
  results: dict[str, dict] = {}
  for name, model_config in config.models:
    workdir = out_dir / name
    measured = _measurements(workdir)
    for steps in schedule:
      if steps in measured and steps != schedule[-1]:
        continue  # measured by an earlier run; the last step always runs to check the checkpoint
      result = train(model_config, dataclasses.replace(config.train, steps=steps), config.task,
                     workdir, progress=run.progress, experiment=run.experiment)
      graphdef, state = nnx.split(result.model)
      values = _measure(state, probe, graphdef=graphdef, num_layers=model_config.num_layers,
                        epsilon=config.epsilon)
      measured[steps] = {"sink_1": float(values["sink_1"]),
                         "eval_loss": float(result.final_eval["loss"]),
                         "alpha_1_LxN": np.asarray(values["alpha_1_LxN"]).tolist()}
      if is_main_process():  # of a run of several processes (momentum_jax.train.launch)
        (workdir / MEASUREMENTS_FILE).write_text(json.dumps(measured))
    final = measured[schedule[-1]]
    results[name] = {"steps": schedule, "sink_1": [measured[s]["sink_1"] for s in schedule],
                     "eval_loss": [measured[s]["eval_loss"] for s in schedule],
                     "model": model_config.to_dict(), "alpha_1_final": final["alpha_1_LxN"]}
    if is_main_process():
      plot_sink_heatmap(np.asarray(final["alpha_1_LxN"]), out_dir / f"sink_heatmap_{name}.png",
                        epsilon=config.epsilon, title=f"{name}: α_1 after {schedule[-1]} steps")

  entropy_rate = config.task.entropy_rate()
  print(f"\nentropy rate of the language: {entropy_rate:.3f} nats")
  print(f"{'model':<20}{'loss':>8}{'Sink_1 %':>10}  Sink_1 over training")
  for name, r in results.items():
    curve = " ".join(f"{s:.0f}" for s in r["sink_1"])
    print(f"{name:<20}{r['eval_loss'][-1]:>8.3f}{r['sink_1'][-1]:>10.1f}  {curve}")
  print()
  return finish(run, {"task": dataclasses.asdict(config.task), "entropy_rate": entropy_rate,
                      "train": config.train.to_dict(), "epsilon": config.epsilon,
                      "results": results},
                {"sink_curve.png": _plot_curves(results, config.epsilon)})


if __name__ == "__main__":
  main()

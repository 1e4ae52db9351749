"""Trains (or loads) the 1-layer softmax and momentum induction models of ``config.py`` and writes
their spectral forensics: JSON, attention patterns, Bode plot and band-energy charts.

    python -m momentum_jax.experiments.spectral_forensics [--quick] [--fresh] [...]
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from momentum_jax.analysis import (
    bode, fir_response, plot_attention_patterns, plot_band_energies, plot_bode,
    rope_momentum_gain, shear_taps,
)
from momentum_jax.core.rope import rope_frequencies
from momentum_jax.data import repeated_random_tokens
from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.recipe import Trained, each_model, finish, train_models
from momentum_jax.experiments.spectral_forensics.config import ExperimentConfig, get_config
from momentum_jax.experiments.spectral_forensics.measure import json_record, measure


def _write_plots(config: ExperimentConfig, arrays: dict[str, dict], momentum_name: str,
                 gamma: float, out_dir: pathlib.Path) -> list[pathlib.Path]:
  names = list(arrays)
  paths = [plot_attention_patterns(
      np.stack([arrays[n]["pattern"] for n in names]), out_dir / "patterns.png",
      title=f"attention on repeated random tokens (L = {config.repeat_len})", layer_labels=names)]
  analytic = bode(shear_taps(gamma))
  responses = {f"analytic shear γ = {gamma:g}": analytic.response_W}
  for n in names:
    for tensor in ("q", "k"):
      taps = arrays[n][f"fit_{tensor}"].taps_NxJ.mean(0)
      responses[f"{n}: FIR fit {tensor} → {tensor}̂"] = fir_response(taps, analytic.omega_W)
  paths.append(plot_bode(analytic.omega_W, responses, out_dir / "bode.png",
                         title="momentum shear: analytic vs fitted on the learned q/k"))
  labels, low, high = [], [], []
  for n in names:
    for tensor, energies in arrays[n]["bands"].items():
      labels.append(f"{n} {tensor}")
      high.append(float(energies.high_fraction.mean()))
      low.append(1.0 - high[-1])
  paths.append(plot_band_energies(labels, low, high, out_dir / "band_energies.png",
                                  title=f"q/k energy along time, cut-off ω = {config.cutoff:.3g}"))
  pairs = arrays[momentum_name]["pairs_k"]
  theta = np.asarray(rope_frequencies(pairs.low.shape[-1] * 2))
  paths.append(plot_band_energies(
      [f"θ={t:.2g}" for t in theta], np.asarray(pairs.low.mean(0)), np.asarray(pairs.high.mean(0)),
      out_dir / "rope_pair_bands.png",
      title=f"{momentum_name}: k after RoPE per RoPE pair, cut-off ω = {config.cutoff:.3g}"))
  return paths


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "spectral_forensics", get_config)
  config, out_dir = run.config, run.out_dir
  probe_key, repeat_key = jax.random.split(jax.random.key(config.seed))
  induction_tokens = config.task.sample(probe_key, config.probe_batch).tokens
  repeated_tokens = repeated_random_tokens(repeat_key, config.probe_batch, config.repeat_len,
                                           config.task.vocab_size)
  arrays = {}

  def row(trained: Trained) -> dict:
    graphdef, state = nnx.split(trained.result.model)
    arrays[trained.name] = measure(state, induction_tokens, repeated_tokens, graphdef=graphdef,
                                    model_config=trained.model, config=config)
    return {"eval_accuracy": float(trained.result.final_eval["accuracy"]),
            **json_record(arrays[trained.name]), "model": trained.model.to_dict()}

  results = train_models(run, each_model(config.models, config.train), config.task, row)
  momentum_name, momentum_config = next(
      (n, c) for n, c in config.models if c.attention == "momentum")
  gamma = float(dict(momentum_config.attention_params)["gamma"])
  omega_F, head_dim = arrays[momentum_name]["omega_F"], momentum_config.head_dim
  paths = _write_plots(config, arrays, momentum_name, gamma, out_dir)
  print(f"\n{'model':<20}{'acc':>7}{'stripe':>8}{'q hi':>7}{'k hi':>7}{'q̂ hi':>7}{'k̂ hi':>7}"
        f"  fitted taps of q (head mean)")
  for name, r in results.items():
    hi = {k: float(np.mean(v)) for k, v in r["high_band_fraction_per_head"].items()}
    taps = np.mean(r["fir_taps_q"], axis=0)
    print(f"{name:<20}{r['eval_accuracy']:>7.1%}{np.mean(r['stripe_score_per_head']):>8.3f}"
          f"{hi['q']:>7.3f}{hi['k']:>7.3f}{hi['q_hat']:>7.3f}{hi['k_hat']:>7.3f}  "
          + " ".join(f"{c:+.3f}" for c in taps))
  print(f"\nanalytic taps [{1 + gamma:+.3f} {-gamma:+.3f}]; gain at Nyquist "
        f"{20 * np.log10(1 + 2 * gamma):.2f} dB; plots " + ", ".join(p.name for p in paths))
  return finish(run, {
      "task": config.task.__dict__, "train": config.train.to_dict(), "cutoff": config.cutoff,
      "repeat_len": config.repeat_len, "omega_F": np.asarray(omega_F).tolist(),
      "analytic_gain_db": np.asarray(10 * jnp.log10(
          jnp.abs(fir_response(shear_taps(gamma), omega_F)) ** 2)).tolist(),
      "rope_theta": np.asarray(rope_frequencies(head_dim)).tolist(),
      "rope_static_momentum_ratio": np.asarray(rope_momentum_gain(head_dim) ** 2).tolist(),
      "results": results}, {}, results_file="spectral_forensics.json")


if __name__ == "__main__":
  main()

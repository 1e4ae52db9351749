"""Train-step time on a device mesh: FSDP and tensor parallelism against data parallelism, and
the text input pipeline against a batch already on the devices.

    python -m momentum_jax.experiments.bench.train_mesh [--devices 8] [--repeats 20]

On a CPU the script runs itself again with ``--devices`` simulated devices (XLA's host platform
device count) when fewer are visible. One run, candidates interleaved step by step, median wall
time per step (jit, two warm-up steps, each step blocked until ready):

  dp        mesh (devices, 1, 1): parameters and optimizer state replicated, batch split;
  fsdp      mesh (1, devices, 1): parameters and optimizer state sharded over ``fsdp``;
  fsdp+tp   mesh (devices / 4, 2, 2): FSDP 2 with the attention and MLP kernels split over
            ``tensor`` 2;
  each on one fixed batch already on the devices, then the ``dp`` step fed by the text iterator
  (host read of the next packed batch, transfer to the mesh, step) against the same step on the
  fixed batch. Printed: seconds per step, the ratios to ``dp``, tokens/s, and the parameter and
  optimizer-state bytes held by one device under each mesh.

The model is the byte-level LM of ``experiments/text_lm``'s default shape: 4 layers, d_model 128,
4 heads, MLP 512, sequences of 256 bytes of the King James Bible, batch 16, AdamW.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from momentum_jax.data import TextDataConfig, load_text_dataset
from momentum_jax.experiments.bench.timing import interleaved_medians
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig
from momentum_jax.train.sharding import batch_sharding, bytes_per_device, make_mesh
from momentum_jax.train.step import init_train_state, step_config, train_step

DATA = TextDataConfig(source="kjv", seq_len=256)
MODEL = TransformerConfig(vocab_size=256, context_len=256, num_layers=4, d_model=128,
                          num_heads=4, mlp_dim=512, attention="momentum",
                          attention_params={"gamma": 0.5})
TRAIN = TrainConfig(batch_size=16, learning_rate=1e-3, optimizer="adamw", weight_decay=0.01)


def _simulated(devices: int, argv: Sequence[str]) -> int | None:
  """Reruns this script with ``devices`` simulated CPU devices when fewer are visible."""
  if jax.device_count() >= devices or jax.default_backend() != "cpu":
    return None
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.call([sys.executable, "-m", __spec__.name, *argv], env=env)


def _mesh_step(shape: tuple[int, int, int], devices: int):
  """``(step, batch, bytes_held)`` of one mesh: a zero-argument call that runs one train step
  on ``batch`` (kept on the devices) and the largest parameter + optimizer bytes on one device."""
  cfg = dataclasses.replace(TRAIN, mesh_shape=shape)
  mesh = make_mesh(shape, jax.devices()[:devices])
  placement_batch = batch_sharding(mesh, cfg.batch_size)
  graphdef, fresh, placement = init_train_state(
      MODEL, cfg, mesh, placement_batch, jax.random.key(0))
  held = {"params": max(bytes_per_device(fresh.params).values()),
          "opt_state": max(bytes_per_device(fresh.opt_state).values())}
  state = fresh._asdict()
  static = dict(graphdef=graphdef, cfg=step_config(cfg), task=None, placement=placement)

  def step(batch):
    state["params"], state["opt_state"], state["rest"], metrics = train_step(
        state["params"], state["opt_state"], state["rest"], batch, jnp.int32(state["step"]),
        **static)
    state["step"] += 1
    return metrics

  return step, placement, held


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(prog="python -m momentum_jax.experiments.bench.train_mesh",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args(argv)
  code = _simulated(args.devices, argv)
  if code is not None:
    raise SystemExit(code)

  dataset = load_text_dataset(DATA)
  iterator = dataset.iterator("train", TRAIN.batch_size, seed=0)
  tokens_per_step = TRAIN.batch_size * DATA.seq_len
  d = args.devices
  shapes = {"dp": (d, 1, 1), "fsdp": (1, d, 1), "fsdp+tp": (d // 4, 2, 2)}
  calls, held, fixed_batches = {}, {}, {}
  for name, shape in shapes.items():
    step, placement, held[name] = _mesh_step(shape, d)
    to_mesh = lambda local, p=placement: jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(p.batch, x), local)
    fixed_batches[name] = to_mesh(next(iterator))
    calls[name] = lambda step=step, b=fixed_batches[name]: step(b)
    if name == "dp":
      calls["dp+pipeline"] = lambda step=step, to_mesh=to_mesh: step(to_mesh(next(iterator)))
  seconds = interleaved_medians(calls, args.repeats)

  print(f"{d} devices ({jax.devices()[0].device_kind}), {MODEL.num_layers} layers, d_model "
        f"{MODEL.d_model}, batch {TRAIN.batch_size} x {DATA.seq_len} tokens, median of "
        f"{args.repeats} steps")
  print(f"{'candidate':<13} {'s/step':>8} {'vs dp':>7} {'tokens/s':>10} {'param B/dev':>12} "
        f"{'opt B/dev':>11}")
  for name, s in seconds.items():
    bytes_held = held.get(name.split("+pipeline")[0], {})
    print(f"{name:<13} {s:8.4f} {s / seconds['dp']:7.3f} {tokens_per_step / s:10.0f} "
          f"{bytes_held.get('params', 0):12d} {bytes_held.get('opt_state', 0):11d}")
  print(f"fsdp / dp = {seconds['fsdp'] / seconds['dp']:.3f}; input pipeline: real data / "
        f"device-resident batch = {seconds['dp+pipeline'] / seconds['dp']:.3f}")
  return seconds


if __name__ == "__main__":
  main()

"""Scanned and rematerialised layers: compile time against depth, FSDP's gathered-weight peak, and
remat's activation memory.

    python -m momentum_jax.experiments.bench.scan_layers [--quick] [--repeats 3]

On a CPU the script runs itself again with 8 simulated devices (XLA's host platform device
count, set before JAX is imported) when fewer are visible. Three measurements, each printed as
a table with its ratios:

  compile   trace + lower + XLA compile of the jitted train step (``optimizer_step`` of
            ``token_loss``, AdamW) at 2 and at 24 layers, scanned (``scan_layers=True``) and
            unscanned, abstract inputs (nothing is run); the minimum of ``--repeats`` fresh jits,
            the four interleaved; and the compiled program's size in lines of HLO text.
            Target: scanned 24 / 2 <= 1.5; the unscanned ratio beside it is what a user pays
            without the scan.
  fsdp      the compiled peak memory per device (``memory_analysis()``: arguments + outputs +
            temporaries − aliased) of the trainer's ``train_step`` on a (1, 8, 1) FSDP mesh at
            12 layers: the scanned model with its stacked weights kept split for the compute
            pass (``compute_shardings``) and gathered one layer at a time inside the scan
            (traced inside ``layer_weight_placement(gather_one_layer(mesh))``), against the
            whole model gathered before the forward pass (``gathered``, what the trainer does
            today and what a model without the scan gets), and the unscanned model beside them.
  remat     the temporaries of the same train step on one device with a scanned 12-layer model
            (activations held for the backward pass), ``remat`` "full" and "save_dots" against
            "none".

The model is the byte-level LM shape of ``experiments/text_lm`` (d_model 128, 4 heads, MLP 512,
context 256, momentum attention γ 0.5) for the compile times; d_model 512 with 8 heads and MLP
2048 at batch 8 × 128 for the FSDP peak, where weights dominate; d_model 256 at batch 16 × 256
for remat, where activations dominate. ``--quick``: tiny shapes and depths 1 and 3, seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from momentum_jax.data import Batch
from momentum_jax.nn import Transformer, TransformerConfig
from momentum_jax.nn.partitioning import layer_weight_placement
from momentum_jax.train import TrainConfig
from momentum_jax.train.config import make_optimizer
from momentum_jax.train.sharding import (
    batch_sharding, compute_shardings, gather_one_layer, gathered, make_mesh, opt_state_shardings,
    param_shardings)
from momentum_jax.train.step import (
    Placement, optimizer_step, step_config, token_loss, train_step)

DEVICES = 8
MODEL = dict(vocab_size=256, context_len=256, num_layers=2, d_model=128, num_heads=4,
             mlp_dim=512, attention="momentum", attention_params={"gamma": 0.5})
FULL = {"compile_layers": (2, 24), "compile_batch": (8, 256),
        "fsdp": dict(num_layers=12, d_model=512, num_heads=8, mlp_dim=2048, context_len=128),
        "fsdp_batch": 8,
        "remat": dict(num_layers=12, d_model=256, num_heads=4, mlp_dim=1024), "remat_batch": 16}
QUICK = {"compile_layers": (1, 3), "compile_batch": (2, 16),
         "fsdp": dict(num_layers=2, d_model=64, num_heads=2, mlp_dim=128, context_len=16),
         "fsdp_batch": 8,
         "remat": dict(num_layers=2, d_model=32, num_heads=2, mlp_dim=64, context_len=16),
         "remat_batch": 2}
TRAIN = TrainConfig(batch_size=8, learning_rate=1e-3, optimizer="adamw", weight_decay=0.01)


def _model(**changes: Any) -> TransformerConfig:
  """The benchmark's model with ``changes`` to its shape or layout."""
  return TransformerConfig(**{**MODEL, **changes})


def _abstract_model(config: TransformerConfig) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """``graphdef, params, rest`` of the model, as shapes (nothing allocated)."""
  return nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))), nnx.Param, ...)


def _abstract_batch(batch: int, seq_len: int, sharding: Any = None) -> Batch:
  ints = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32, sharding=sharding)
  return Batch(tokens=ints, targets=ints,
               loss_mask=jax.ShapeDtypeStruct((batch, seq_len), jnp.float32, sharding=sharding))


def compile_seconds(config: TransformerConfig, batch: int, seq_len: int) -> tuple[float, int]:
  """Seconds to trace, lower and compile a fresh jit of the AdamW train step of ``config``, and
  the line count of the compiled program's HLO text (its size, which the scan keeps flat)."""
  graphdef, params, rest = _abstract_model(config)
  tx = optax.adamw(1e-3)
  step = jax.jit(optimizer_step(token_loss(graphdef), tx))  # a new function: no cache hit
  start = time.perf_counter()
  compiled = step.lower(params, rest, jax.eval_shape(tx.init, params),
                        _abstract_batch(batch, seq_len)).compile()
  return time.perf_counter() - start, len(compiled.as_text().splitlines())


def _peak_bytes(compiled: Any) -> dict[str, int]:
  """The compiled program's memory per device: arguments, outputs, temporaries and their sum
  less what outputs alias (donated arguments)."""
  stats = compiled.memory_analysis()
  out = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
         "temporaries": stats.temp_size_in_bytes, "aliased": stats.alias_size_in_bytes}
  out["peak"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
  return out


def train_step_memory(config: TransformerConfig, batch: int, mesh_shape: tuple[int, int, int],
                      *, per_layer_gather: bool) -> dict[str, int]:
  """Compiled memory per device of the trainer's ``train_step`` on a mesh of ``mesh_shape``
  (the first devices), gathering stacked weights per layer or the whole model first."""
  cfg = dataclasses.replace(TRAIN, batch_size=batch, mesh_shape=mesh_shape)
  mesh = make_mesh(mesh_shape, jax.devices()[:math.prod(mesh_shape)])
  graphdef, params, rest = _abstract_model(config)
  params_sharding = param_shardings(params, mesh)
  tx = make_optimizer(cfg)
  opt_sharding = opt_state_shardings(tx, jax.eval_shape(tx.init, params), params_sharding, mesh)
  compute = (compute_shardings(params_sharding) if per_layer_gather
             else jax.tree.map(gathered, params_sharding))
  replicated = NamedSharding(mesh, PartitionSpec())
  placement = Placement(
      params=tuple(jax.tree.leaves(params_sharding)),
      opt_state=tuple(jax.tree.leaves(opt_sharding)),
      batch=batch_sharding(mesh, batch), replicated=replicated,
      compute_params=tuple(jax.tree.leaves(compute)))
  placed = lambda tree, shardings: jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
  trace = layer_weight_placement(gather_one_layer(mesh)) if per_layer_gather else (
      contextlib.nullcontext())
  with trace:
    lowered = train_step.lower(
        placed(params, params_sharding), placed(jax.eval_shape(tx.init, params), opt_sharding),
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), rest),
        _abstract_batch(batch, config.context_len, placement.batch),
        jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        graphdef=graphdef, cfg=step_config(cfg), task=None, placement=placement)
  return _peak_bytes(lowered.compile())


def _measure(sizes: dict[str, Any], repeats: int) -> dict[str, Any]:
  results: dict[str, Any] = {"devices": jax.device_count(), "compile": {}, "hlo_lines": {},
                             "fsdp": {}, "remat": {}}
  batch, seq_len = sizes["compile_batch"]
  configs = {f"{'scanned' if scan else 'unscanned'}/{layers}":
             _model(num_layers=layers, context_len=seq_len, scan_layers=scan)
             for scan in (True, False) for layers in sizes["compile_layers"]}
  times: dict[str, list[float]] = {name: [] for name in configs}
  for _ in range(repeats):  # interleaved, so that background load falls on all alike
    for name, config in configs.items():
      seconds, results["hlo_lines"][name] = compile_seconds(config, batch, seq_len)
      times[name].append(seconds)
  results["compile"] = {name: min(t) for name, t in times.items()}
  fsdp = _model(**sizes["fsdp"])
  mesh_shape = (1, DEVICES, 1)
  for name, scan, per_layer in (("scanned, per-layer gather", True, True),
                                ("scanned, whole-model gather", True, False),
                                ("unscanned (whole model)", False, False)):
    results["fsdp"][name] = train_step_memory(
        dataclasses.replace(fsdp, scan_layers=scan), sizes["fsdp_batch"], mesh_shape,
        per_layer_gather=per_layer)
  remat = _model(**sizes["remat"], scan_layers=True)
  for policy in ("none", "full", "save_dots"):
    results["remat"][policy] = train_step_memory(
        dataclasses.replace(remat, remat=policy), sizes["remat_batch"], (1, 1, 1),
        per_layer_gather=True)
  return results


def _print(results: dict[str, Any], sizes: dict[str, Any]) -> None:
  mib = lambda b: b / 2**20
  low, high = sizes["compile_layers"]
  compile_s = results["compile"]
  print(f"compile: trace + lower + compile of the AdamW train step, d_model {MODEL['d_model']}, "
        f"batch {sizes['compile_batch'][0]} x {sizes['compile_batch'][1]}, min over repeats")
  lines = results["hlo_lines"]
  print(f"{'layout':<10} {f'{low} layers s':>12} {f'{high} layers s':>13} {'ratio':>7} "
        f"{'HLO lines':>19}")
  for layout in ("scanned", "unscanned"):
    a, b = compile_s[f"{layout}/{low}"], compile_s[f"{layout}/{high}"]
    hlo = f"{lines[f'{layout}/{low}']} -> {lines[f'{layout}/{high}']}"
    print(f"{layout:<10} {a:12.2f} {b:13.2f} {b / a:7.2f} {hlo:>19}")
  fsdp = sizes["fsdp"]
  print(f"\nfsdp: train_step peak per device on a (1, {DEVICES}, 1) mesh, {fsdp['num_layers']} "
        f"layers, d_model {fsdp['d_model']}, MLP {fsdp['mlp_dim']}, batch "
        f"{sizes['fsdp_batch']} x {fsdp['context_len']} (MiB)")
  base = results["fsdp"]["scanned, whole-model gather"]["peak"]
  print(f"{'gathering':<28} {'peak':>8} {'temps':>8} {'args':>8} {'vs whole':>9}")
  for name, m in results["fsdp"].items():
    print(f"{name:<28} {mib(m['peak']):8.1f} {mib(m['temporaries']):8.1f} "
          f"{mib(m['arguments']):8.1f} {m['peak'] / base:9.3f}")
  remat = sizes["remat"]
  print(f"\nremat: train_step temporaries on one device, scanned, {remat['num_layers']} layers, "
        f"d_model {remat['d_model']}, batch {sizes['remat_batch']} x "
        f"{remat.get('context_len', MODEL['context_len'])} (MiB)")
  none = results["remat"]["none"]["temporaries"]
  print(f"{'remat':<10} {'temps':>8} {'vs none':>8}")
  for name, m in results["remat"].items():
    print(f"{name:<10} {mib(m['temporaries']):8.1f} {m['temporaries'] / none:8.3f}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(prog="python -m momentum_jax.experiments.bench.scan_layers",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny shapes, seconds")
  parser.add_argument("--repeats", type=int, default=3, help="fresh compiles per point (min)")
  parser.add_argument("--json", help="also write the results to this JSON file")
  args = parser.parse_args(argv)
  if jax.device_count() < DEVICES and jax.default_backend() == "cpu":
    with tempfile.TemporaryDirectory() as folder:
      path = args.json or os.path.join(folder, "results.json")
      env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}")
      again = ["--repeats", str(args.repeats), *(["--quick"] if args.quick else [])]
      subprocess.run([sys.executable, "-m", __spec__.name, *again, "--json", path], env=env,
                     check=True)
      return json.loads(pathlib.Path(path).read_text())
  sizes = QUICK if args.quick else FULL
  results = _measure(sizes, args.repeats)
  _print(results, sizes)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
  return results


if __name__ == "__main__":
  main()

"""train() on 8 simulated CPU devices: FSDP / tensor-parallel meshes match one device, and a
checkpoint written on one mesh resumes on another.

One subprocess (``XLA_FLAGS`` must be set before JAX is imported) trains every mesh and prints
the results as JSON.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

_WORKER = """
import contextlib, dataclasses, io, json, pathlib, shutil, sys
import jax, numpy as np
from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, train

root = pathlib.Path(sys.argv[1])
task = InductionTask(vocab_size=32, segment_len=4, max_gap=4)
model = TransformerConfig(vocab_size=32, context_len=task.seq_len, num_layers=2, d_model=64,
                          num_heads=4, mlp_dim=128, attention="momentum",
                          attention_params={"gamma": 0.5})
base = TrainConfig(steps=20, batch_size=8, learning_rate=3e-3, optimizer="adamw",
                   weight_decay=0.01, eval_every=0, eval_batches=1, log_every=1,
                   checkpoint_every=10, tensorboard=False)

def run(shape, workdir, steps=20):
  cfg = dataclasses.replace(base, mesh_shape=shape, steps=steps)
  return train(model, cfg, task, root / workdir, progress=False)

def leaves(result):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(result.params)]

out = {"devices": jax.device_count(), "curves": {}}
reference = None
for shape in (None, (1, 8, 1), (2, 4, 1), (2, 2, 2)):
  result = run(shape, f"curve_{shape}")
  out["curves"][str(shape)] = [r["train_loss"] for r in result.history if "train_loss" in r]
  if shape is None:
    reference = leaves(result)
  else:
    out.setdefault("param_diffs", {})[str(shape)] = max(
        float(np.max(np.abs(a - b))) for a, b in zip(leaves(result), reference))
  if shape == (1, 8, 1):
    kernel = result.params["blocks"][0]["mlp"]["up"]["kernel"][...]
    out["fsdp_kernel_shards"] = sorted({s.data.shape for s in kernel.addressable_shards})

# Saved on (2, 4), resumed on (8, 1) and on one device: the same parameters as straight through.
straight = leaves(run((2, 4, 1), "straight"))
run((2, 4, 1), "moved_8x1", steps=10)
shutil.copytree(root / "moved_8x1", root / "moved_1")
for shape, name in (((8, 1, 1), "moved_8x1"), (None, "moved_1")):
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    result = run(shape, name)
  out.setdefault("moved_diffs", {})[name] = max(
      float(np.max(np.abs(a - b))) for a, b in zip(leaves(result), straight))
  out.setdefault("moved_printed", {})[name] = printed.getvalue()

# Bytes each device holds of the parameters and the AdamW state under FSDP over 8 devices.
from momentum_jax.train import batch_sharding, bytes_per_device, init_train_state, make_mesh
fsdp = make_mesh((1, 8, 1))
_, state, _ = init_train_state(
    model, base, fsdp, batch_sharding(fsdp, base.batch_size), jax.random.key(0))
for name, tree in (("params", state.params), ("opt_state", state.opt_state)):
  held = bytes_per_device(tree)
  total = sum(x.nbytes for x in jax.tree.leaves(tree))
  out.setdefault("fsdp_bytes", {})[name] = {"total": total, "per_device": sorted(held.values())}

for shape, batch in (((3, 1, 1), 8), ((2, 4, 1), 6)):
  try:
    run_cfg = dataclasses.replace(base, mesh_shape=shape, batch_size=batch)
    train(model, run_cfg, task, root / f"bad_{shape}_{batch}", progress=False)
  except ValueError as error:
    out.setdefault("errors", []).append(str(error))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def mesh_results(tmp_path_factory):
  root = tmp_path_factory.mktemp("meshes")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", _WORKER, str(root)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_every_mesh_gives_the_one_device_loss_curve(mesh_results):
  assert mesh_results["devices"] == 8
  one = mesh_results["curves"]["None"]
  assert len(one) == 20 and one[-1] < one[0]
  for shape in ("(1, 8, 1)", "(2, 4, 1)", "(2, 2, 2)"):
    np.testing.assert_allclose(mesh_results["curves"][shape], one, rtol=1e-5, err_msg=shape)
    assert mesh_results["param_diffs"][shape] < 1e-5, shape


def _check_fsdp_splits_the_kernels_over_eight_devices(mesh_results):
  # mlp.up kernel [d_model=64, mlp_dim=128]: the embed axis is split over fsdp = 8.
  assert mesh_results["fsdp_kernel_shards"] == [[8, 128]]


def _check_fsdp_over_eight_devices_holds_an_eighth_of_the_bytes_on_each(mesh_results, tree):
  held = mesh_results["fsdp_bytes"][tree]
  assert len(held["per_device"]) == 8
  # 1/8 of the weights plus the small replicated parameters (γ per layer, counters).
  assert max(held["per_device"]) <= held["total"] / 8 * 1.05, held
  assert min(held["per_device"]) >= held["total"] / 8, held


def _check_a_checkpoint_moves_to_another_mesh_and_training_goes_on(mesh_results):
  for name in ("moved_8x1", "moved_1"):
    # Resumed from the checkpoint written on (2, 4), not restarted.
    assert f"resumed {name} from step 10 of 20" in mesh_results["moved_printed"][name]
    assert mesh_results["moved_diffs"][name] < 1e-5, name


def _check_a_mesh_that_does_not_fit_the_devices_or_the_batch_is_refused(mesh_results):
  devices_error, batch_error = mesh_results["errors"]
  assert "mesh_shape" in devices_error and "8" in devices_error
  assert "batch_size=6" in batch_error


@pytest.mark.slow
def test_meshes_train_alike_split_the_bytes_move_checkpoints_and_refuse_misfits(mesh_results):
  """One test over the module's runs, so that a parallel test session trains them once."""
  _check_every_mesh_gives_the_one_device_loss_curve(mesh_results)
  _check_fsdp_splits_the_kernels_over_eight_devices(mesh_results)
  for tree in ("params", "opt_state"):
    _check_fsdp_over_eight_devices_holds_an_eighth_of_the_bytes_on_each(mesh_results, tree)
  _check_a_checkpoint_moves_to_another_mesh_and_training_goes_on(mesh_results)
  _check_a_mesh_that_does_not_fit_the_devices_or_the_batch_is_refused(mesh_results)

"""restore_latest on real orbax checkpoints: damaged steps are set aside with a warning and the
previous step is restored bit for bit (with its data position); saving continues at the damaged
step's number; a wrong config is an error, not damage; a (2, 4) mesh's checkpoint restores onto
an (8, 1) mesh and onto one device.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from momentum_jax.train.checkpoint import (
    ConfigMismatchError, CorruptCheckpointWarning, checkpoint_manager, restore_latest, save)

REPO = pathlib.Path(__file__).resolve().parents[2]
SIGNATURE = {"version": "test", "model": {"d_model": 64}, "train": {"learning_rate": 0.01}}
STEPS = (10, 20, 30)


def _state(step: int) -> dict:
  """A small state with a float32 matrix large enough for its own data file, bf16 and int leaves."""
  rng = np.random.default_rng(step)
  return {
      "params": {"w": jnp.asarray(rng.standard_normal((64, 64), np.float32)),
                 "b": jnp.asarray(rng.standard_normal(8, np.float32), jnp.bfloat16)},
      "opt_state": {"count": jnp.arange(5, dtype=jnp.int32) * step},
      "step": jnp.int32(step),
  }


def _data_state(step: int) -> dict:
  return {"shard": 2, "offset": step * 1024 + 7, "epoch": 0, "order": [3, 1, 2]}


def _write(workdir: pathlib.Path, steps=STEPS) -> None:
  manager = checkpoint_manager(workdir)
  for step in steps:
    save(manager, step, _state(step), SIGNATURE, _data_state(step))
  manager.wait_until_finished()
  manager.close()


def _restore(workdir: pathlib.Path, target=None, signature=SIGNATURE):
  """``restore_latest`` on a fresh manager: (restored, warnings as (message, category), manager)."""
  manager = checkpoint_manager(workdir)
  caught = []
  restored = restore_latest(manager, _state(0) if target is None else target, signature,
                            warn=lambda message, category: caught.append((message, category)))
  return restored, caught, manager


def _assert_bitwise_equal(restored, expected) -> None:
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    got, want = np.asarray(got), np.asarray(want)
    assert (got.dtype, got.shape) == (want.dtype, want.shape)
    assert got.tobytes() == want.tobytes()


def _step_dir(workdir: pathlib.Path, step: int) -> pathlib.Path:
  return workdir / "checkpoints" / str(step)


def _truncate_every_file(step_dir: pathlib.Path) -> None:
  for path in step_dir.rglob("*"):
    if path.is_file():
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _truncate_signature(step_dir: pathlib.Path) -> None:
  path = step_dir / "config" / "metadata"  # the JSON file JsonCheckpointHandler writes
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
  """The OCDBT data file TensorStore wrote ``w``'s zstd-compressed chunk to."""
  files = sorted((step_dir / "state").glob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size)
  assert files[-1].stat().st_size > 10_000 and files[-1].read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
  return files[-1]


def _flip_array_data(start: int | None):
  """Flips a bit in each of 4 bytes of ``w``'s data file from ``start`` (None: the middle)."""
  def flip(step_dir: pathlib.Path) -> None:
    path = _largest_data_file(step_dir)
    data = bytearray(path.read_bytes())
    first = len(data) // 2 if start is None else start
    for i in range(first, first + 4):
      data[i] ^= 0x10
    path.write_bytes(bytes(data))
  return flip


def _truncate_array_data(step_dir: pathlib.Path) -> None:
  path = _largest_data_file(step_dir)
  path.write_bytes(path.read_bytes()[:1000])


def _delete(item: str):
  return lambda step_dir: shutil.rmtree(step_dir / item)


# ``cause``: the start of the cause the warning gives, then other parts of it.
@pytest.mark.parametrize("corrupt, cause", [
    # Every file cut in half: the state's _METADATA JSON is the first thing read.
    (_truncate_every_file, ["metadata: JSONDecodeError: Unterminated string"]),
    (_truncate_signature, ["config: JSONDecodeError"]),
    # Flipped bits in the middle of the compressed data decode without error to other numbers;
    # only the digest sees them.
    (_flip_array_data(None), ["state: 1 array(s) differ from the digest saved with them, first "
                              "['params']['w']"]),
    # Near the start of the zstd frame they fail to decode.
    (_flip_array_data(7), ["state: ValueError: FAILED_PRECONDITION: Error reading \"params.w/0.0\"",
                           "ZSTD_decompressStream() failed: Data corruption detected"]),
    (_truncate_array_data, ["state: ValueError: OUT_OF_RANGE: Error reading \"params.w/0.0\"",
                            "Requested byte range [0, "]),
    (_delete("state"), ["state: KeyError: 'Item \"state\" was not found in the checkpoint."]),
    (_delete("data"), ["data: KeyError: 'Item \"data\" was not found in the checkpoint."]),
], ids=["every-file-truncated", "signature-truncated", "array-data-bit-flips",
        "array-header-bit-flips", "array-data-truncated", "state-deleted", "data-deleted"])
# When one array fails to read, orbax abandons the reads of the others; their coroutines are
# collected later with "Event loop is closed" (reported through Python's unraisable hook).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_newest_step_falls_back_to_the_previous(tmp_path, corrupt, cause):
  _write(tmp_path)
  corrupt(_step_dir(tmp_path, 30))
  restored, caught, manager = _restore(tmp_path)

  assert restored.step == 20
  _assert_bitwise_equal(restored.state, _state(20))
  assert restored.data_state == _data_state(20)
  assert restored.signature == SIGNATURE
  [(message, category)] = caught
  assert category is CorruptCheckpointWarning and issubclass(category, UserWarning)
  assert message.startswith(f"checkpoint step 30 in {tmp_path / 'checkpoints'} is unreadable")
  assert f"({cause[0]}" in message and all(part in message for part in cause[1:])
  assert message.endswith(f"moved it to {tmp_path / 'corrupt_checkpoints' / '30'}; "
                          "falling back to step 20")
  assert (tmp_path / "corrupt_checkpoints" / "30").is_dir() and not _step_dir(tmp_path, 30).exists()
  assert manager.all_steps() == [10, 20] and manager.latest_step() == 20
  manager.close()


def test_a_read_only_restore_skips_a_damaged_step_and_moves_nothing(tmp_path):
  _write(tmp_path)
  _truncate_signature(_step_dir(tmp_path, 30))
  before = sorted(p for p in tmp_path.rglob("*"))
  manager = checkpoint_manager(tmp_path, create=False)
  caught = []
  restored = restore_latest(manager, _state(0), SIGNATURE, read_only=True,
                            warn=lambda message, category: caught.append(message))
  manager.close()
  assert restored.step == 20
  _assert_bitwise_equal(restored.state, _state(20))
  [message] = caught
  assert message.startswith(f"checkpoint step 30 in {tmp_path / 'checkpoints'} is unreadable")
  assert message.endswith("left it in place; falling back to step 20")
  assert sorted(p for p in tmp_path.rglob("*")) == before


def test_every_step_damaged_returns_none_and_says_training_starts_over(tmp_path):
  _write(tmp_path)
  for step in STEPS:
    _truncate_every_file(_step_dir(tmp_path, step))
  with pytest.warns(CorruptCheckpointWarning) as record:
    restored = restore_latest(checkpoint_manager(tmp_path), _state(0), SIGNATURE)

  assert restored is None
  messages = [str(w.message) for w in record if w.category is CorruptCheckpointWarning]
  assert [m.split(" in ")[0] for m in messages] == [
      "checkpoint step 30", "checkpoint step 20", "checkpoint step 10"]
  assert all(m.endswith("no readable checkpoint is left, so training starts from scratch")
             for m in messages)
  assert sorted(p.name for p in (tmp_path / "corrupt_checkpoints").iterdir()) == ["10", "20", "30"]
  assert checkpoint_manager(tmp_path).latest_step() is None


def test_after_a_fallback_the_damaged_step_is_saved_again(tmp_path):
  _write(tmp_path)
  _truncate_every_file(_step_dir(tmp_path, 30))
  restored, caught, manager = _restore(tmp_path)
  assert restored.step == 20 and len(caught) == 1

  # The resumed run reaches step 30 again (orbax would skip a save at or below an existing step).
  save(manager, 30, _state(31), SIGNATURE, _data_state(31))
  manager.wait_until_finished()
  manager.close()
  restored, caught, manager = _restore(tmp_path)
  assert caught == [] and restored.step == 30
  _assert_bitwise_equal(restored.state, _state(31))
  assert restored.data_state == _data_state(31)

  # Then step 40; orbax keeps the last 3.
  save(manager, 40, _state(40), SIGNATURE, _data_state(40))
  manager.wait_until_finished()
  assert manager.all_steps() == [20, 30, 40]
  manager.close()

  # Steps 40 and 30 damaged: both fall back to 20; 30 is set aside under another name.
  _truncate_signature(_step_dir(tmp_path, 40))
  _truncate_signature(_step_dir(tmp_path, 30))
  restored, caught, manager = _restore(tmp_path)
  cause = "config: JSONDecodeError: Expecting ':' delimiter: line 1 column 40 (char 39)"
  assert restored.step == 20 and [message for message, _ in caught] == [
      f"checkpoint step {step} in {tmp_path / 'checkpoints'} is unreadable ({cause}); moved it "
      f"to {tmp_path / 'corrupt_checkpoints' / moved}; falling back to step 20"
      for step, moved in [(40, "40"), (30, "30.1")]]
  assert manager.all_steps() == [20]
  manager.close()


def test_undamaged_round_trip_with_and_without_a_data_state(tmp_path):
  manager = checkpoint_manager(tmp_path)
  save(manager, 5, _state(5), SIGNATURE)
  save(manager, 6, _state(6), SIGNATURE, _data_state(6))
  manager.wait_until_finished()
  manager.close()
  restored, caught, manager = _restore(tmp_path)
  assert caught == [] and restored.step == 6 and restored.data_state == _data_state(6)
  _assert_bitwise_equal(restored.state, _state(6))
  manager.close()
  shutil.rmtree(_step_dir(tmp_path, 6))
  restored, caught, _ = _restore(tmp_path)
  assert caught == [] and restored.step == 5 and restored.data_state is None
  _assert_bitwise_equal(restored.state, _state(5))


def test_a_different_config_is_an_error_not_damage(tmp_path):
  _write(tmp_path)
  _truncate_every_file(_step_dir(tmp_path, 30))
  other = {**SIGNATURE, "model": {"d_model": 32}}
  smaller = {**_state(0), "params": {"w": jnp.zeros((32, 32)), "b": jnp.zeros(8, jnp.bfloat16)}}
  with pytest.raises(ConfigMismatchError, match=r"step 20 .*\n  model\.d_model: saved 64 vs "
                                                r"current 32") as error:
    _restore(tmp_path, target=smaller, signature=other)
  assert error.value.step == 20 and error.value.differences == [
      "model.d_model: saved 64 vs current 32"]
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10", "20", "30"]
  assert not (tmp_path / "corrupt_checkpoints").exists()


def test_a_step_saved_without_a_digest_is_restored_unchecked(tmp_path):
  manager = checkpoint_manager(tmp_path)
  manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(7)),
                                          config=ocp.args.JsonSave(SIGNATURE)))
  manager.wait_until_finished()
  manager.close()
  restored, caught, _ = _restore(tmp_path)
  assert caught == [] and restored.step == 7 and restored.data_state is None
  _assert_bitwise_equal(restored.state, _state(7))


def _digest_file(step_dir: pathlib.Path) -> pathlib.Path:
  return step_dir / "digest" / "metadata"  # the JSON file JsonCheckpointHandler writes


def _change_a_digit_of_the_digest(step_dir: pathlib.Path) -> None:
  """Still valid JSON: one digit of the state's first array digest changed."""
  path = _digest_file(step_dir)
  digest = json.loads(path.read_text())
  first = sorted(digest["state"])[0]
  digest["state"][first] ^= 1
  path.write_text(json.dumps(digest))


def _truncate_the_digest(step_dir: pathlib.Path) -> None:
  path = _digest_file(step_dir)
  path.write_bytes(path.read_bytes()[:20])


@pytest.mark.parametrize("damage, why", [
    (_change_a_digit_of_the_digest, "digest: its entries differ from its own checksum"),
    (_truncate_the_digest, "digest: JSONDecodeError"),
], ids=["digit-changed", "truncated"])
def test_a_damaged_digest_file_is_named_and_its_good_step_kept(tmp_path, damage, why):
  _write(tmp_path)
  damage(_step_dir(tmp_path, 30))
  restored, caught, manager = _restore(tmp_path)
  assert restored.step == 30 and restored.unverified.startswith(why)
  _assert_bitwise_equal(restored.state, _state(30))
  assert restored.data_state == _data_state(30)
  [(message, category)] = caught
  assert category is CorruptCheckpointWarning
  digest_file = _digest_file(_step_dir(tmp_path, 30))
  assert message.startswith(f"checkpoint step 30: its digest file {digest_file} is damaged ({why}")
  assert message.endswith("the step's other items read without error and are restored unchecked")
  assert manager.all_steps() == [10, 20, 30] and not (tmp_path / "corrupt_checkpoints").exists()
  manager.close()


_MESH_WORKER = """
import json, sys, pathlib
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from momentum_jax.train import checkpoint

assert jax.device_count() == 8, jax.devices()
workdir = pathlib.Path(sys.argv[1])
signature = {"version": "test"}
rng = np.random.default_rng(0)
values = {"params": {"w": rng.standard_normal((16, 8), np.float32),
                     "b": rng.standard_normal(8, np.float32).astype(jnp.bfloat16)},
          "step": np.int32(7)}
specs = {"params": {"w": P("data", "fsdp"), "b": P("fsdp")}, "step": P()}
devices = np.asarray(jax.devices())

def on_mesh(tree, shape):
  mesh = Mesh(devices.reshape(shape), ("data", "fsdp"))
  return jax.tree.map(lambda v, s: jax.device_put(v, NamedSharding(mesh, s)), tree, specs)

manager = checkpoint.checkpoint_manager(workdir)
saved = on_mesh(values, (2, 4))
assert len(saved["params"]["w"].addressable_shards) == 8
checkpoint.save(manager, 3, saved, signature, {"offset": 11})
manager.wait_until_finished()
manager.close()

zeros = jax.tree.map(np.zeros_like, values)
report = {}
for name, target in [("8x1", on_mesh(zeros, (8, 1))),
                     ("one device", jax.device_put(zeros, devices[5]))]:
  manager = checkpoint.checkpoint_manager(workdir)
  warned = []
  restored = checkpoint.restore_latest(manager, target, signature,
                                       warn=lambda m, c: warned.append(m))
  manager.close()
  got, want = jax.tree.leaves(restored.state), jax.tree.leaves(values)
  report[name] = {
      "warned": warned, "step": restored.step, "data_state": restored.data_state,
      "bitwise_equal": all(np.asarray(g).tobytes() == np.asarray(w).tobytes()
                           and np.asarray(g).dtype == np.asarray(w).dtype
                           for g, w in zip(got, want)),
      "target_shardings": all(g.sharding == t.sharding
                              for g, t in zip(got, jax.tree.leaves(target))),
      "devices_per_array": sorted({len(g.sharding.device_set) for g in got}),
      "w_shard_shape": list(restored.state["params"]["w"].addressable_shards[0].data.shape),
  }
print(json.dumps(report))
"""


def test_a_checkpoint_from_a_2x4_mesh_restores_onto_8x1_and_one_device(tmp_path):
  path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
  env = {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  run = subprocess.run([sys.executable, "-c", _MESH_WORKER, str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads(run.stdout.strip().splitlines()[-1])
  for name, devices, w_shard in [("8x1", [8], [2, 8]), ("one device", [1], [16, 8])]:
    result = report[name]
    assert result["warned"] == [] and result["step"] == 3
    assert result["data_state"] == {"offset": 11}
    assert result["bitwise_equal"] and result["target_shardings"], result
    assert result["devices_per_array"] == devices and result["w_shard_shape"] == w_shard

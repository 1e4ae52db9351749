"""Scanned and rematerialised layers: a model with ``scan_layers`` draws the stacked values of the
unscanned one and computes its logits, auxiliary losses, module-state updates and gradients;
``remat`` changes neither; hooks capture and edit under every layer's name; decoding equals the
full pass; per-layer γ is scanned; what cannot share one scan body is refused by name; stacked
weights keep their FSDP split for the compute pass and, gathered one layer at a time inside the
scan on 8 devices, train as on one; a scanned run resumes itself and refuses an unscanned run's
checkpoint by naming ``model.scan_layers``."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

from momentum_jax.nn import (
    REMAT_POLICIES, Transformer, TransformerConfig, decode, generate, init_cache, stack_layers,
    unstack_layers, value_grad_and_layer_stats)
from momentum_jax.nn.stacking import unstack_state
from momentum_jax.nn.partitioning import layer_weight_placement, layer_weights_placed
from momentum_jax.train import MESH_AXES, make_mesh, param_shardings
from momentum_jax.train.sharding import compute_shardings, gather_one_layer

BASE = TransformerConfig(vocab_size=29, context_len=16, num_layers=3, d_model=32, num_heads=4,
                         num_kv_heads=2, mlp_dim=48, attention="momentum",
                         attention_params={"gamma": 0.5})
PER_LAYER_GAMMA = [{"gamma": 0.25}, {"gamma": 0.5}, {"gamma": 0.75}]
CONFIGS = {
    "momentum": {},
    "gamma_per_layer": {"attention_params": PER_LAYER_GAMMA},
    "learned_gamma_sinks_gate": {"attention": "momentum_learned", "attention_params": {},
                                 "learnable_sinks": True, "gate": "headwise"},
    "moh_flux": {"attention": "softmax", "attention_params": {}, "moh": True,
                 "moh_shared_heads": 1, "moh_top_k": 2, "flux_router": True, "flux_window": 4},
    "affine_bfloat16_params": {"attention": "affine", "attention_params": {},
                               "param_dtype": "bfloat16"},
}


def _tokens(batch=2, seq=13, seed=0):
  return jax.random.randint(jax.random.key(seed), (batch, seq), 0, BASE.vocab_size)


def _pair(**changes):
  """An unscanned model and its scanned twin (same values)."""
  model = Transformer(dataclasses.replace(BASE, **changes), rngs=nnx.Rngs(0))
  return model, stack_layers(model)


def _stacked_like_unscanned(state):
  """An unscanned model's state with its blocks stacked, to compare with a scanned one's."""
  state = nnx.State(dict(state))
  if "blocks" not in state:
    return state
  blocks = [state["blocks"][i] for i in range(len(state["blocks"]))]
  state["blocks"] = jax.tree.map(lambda *layers: jnp.stack(layers), *blocks)
  return jax.tree.map(np.asarray, state)


def _assert_trees_close(actual, expected, tol):
  paths_a = jax.tree_util.tree_leaves_with_path(actual)
  leaves_e = jax.tree.leaves(expected)
  assert len(paths_a) == len(leaves_e)
  for (path, a), e in zip(paths_a, leaves_e):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=tol,
                               atol=tol, err_msg=jax.tree_util.keystr(path))


def _loss(model, tokens):
  logits, aux = model.logits_and_aux_loss(tokens)
  return jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + aux["total"], (logits, aux)


@pytest.mark.slow
def test_a_scanned_model_draws_the_stacked_values_of_the_unscanned_one():
  config = dataclasses.replace(BASE, attention_params=PER_LAYER_GAMMA, flux_router=True)
  unscanned = Transformer(config, rngs=nnx.Rngs(3))
  scanned = Transformer(dataclasses.replace(config, scan_layers=True), rngs=nnx.Rngs(3))
  assert scanned.blocks.attn.q_proj.kernel.shape == (3, 32, 32)
  assert scanned.blocks.attn.q_proj.kernel.get_metadata()["out_sharding"] == (
      "layers", "embed", "heads")
  keys = lambda s: jax.tree.map(
      lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, s)
  _assert_trees_close(keys(nnx.state(scanned)),
                      _stacked_like_unscanned(keys(nnx.state(unscanned))), 0)
  back = unstack_layers(scanned)
  assert not back.config.scan_layers and back.blocks[2].attn.config.attention_params == (
      ("gamma", 0.75),)
  _assert_trees_close(keys(nnx.state(back)), keys(nnx.state(unscanned)), 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_scanned_and_unscanned_give_the_same_logits_state_and_gradients(name):
  unscanned, scanned = _pair(**CONFIGS[name])
  tokens = _tokens()
  grad = nnx.jit(nnx.value_and_grad(_loss, has_aux=True))
  (_, (logits_u, aux_u)), grads_u = grad(unscanned, tokens)
  (_, (logits_s, aux_s)), grads_s = grad(scanned, tokens)
  tol = 2e-2 if "bfloat16" in name else 1e-5
  np.testing.assert_allclose(logits_s, logits_u, rtol=tol, atol=tol)
  assert aux_s.keys() == aux_u.keys()
  _assert_trees_close(aux_s, aux_u, tol)
  _assert_trees_close(grads_s, _stacked_like_unscanned(grads_u), tol)
  # Module state the pass updates (flux routers' noise counts, affine's running α) alike.
  rest = lambda m: jax.tree.map(
      lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x,
      nnx.state(m, nnx.Not(nnx.Param)))
  _assert_trees_close(rest(scanned), _stacked_like_unscanned(rest(unscanned)), tol)


@pytest.mark.slow
@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("remat", [p for p in REMAT_POLICIES if p != "none"])
def test_remat_gives_the_values_and_gradients_of_none(remat, scan_layers):
  config = dataclasses.replace(BASE, scan_layers=scan_layers, moh=True, moh_top_k=2)
  plain = Transformer(config, rngs=nnx.Rngs(1))
  rematted = Transformer(dataclasses.replace(config, remat=remat), rngs=nnx.Rngs(1))
  tokens = _tokens()
  grad = nnx.jit(nnx.value_and_grad(_loss, has_aux=True))
  (value_p, (_, aux_p)), grads_p = grad(plain, tokens)
  (value_r, (_, aux_r)), grads_r = grad(rematted, tokens)
  np.testing.assert_allclose(value_r, value_p, rtol=1e-6)
  _assert_trees_close(aux_r, aux_p, 1e-6)
  _assert_trees_close(grads_r, grads_p, 1e-6)


@pytest.mark.slow
def test_remat_recomputes_in_the_backward_pass():
  """The remat policy reaches the program: "full" saves fewer residuals than "none"."""
  tokens = _tokens()

  def residual_bytes(remat):
    model = Transformer(dataclasses.replace(BASE, scan_layers=True, remat=remat),
                        rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    loss = lambda p: _loss(nnx.merge(graphdef, p), tokens)[0]
    _, vjp = jax.vjp(loss, params)
    return sum(x.nbytes for x in jax.tree.leaves(vjp) if hasattr(x, "nbytes"))

  assert residual_bytes("full") < residual_bytes("save_dots") < residual_bytes("none")


@pytest.mark.slow
def test_hooks_capture_and_edit_every_layer_of_a_scanned_model():
  unscanned, scanned = _pair(attention_params=PER_LAYER_GAMMA)
  tokens = _tokens()
  names = ["blocks.0.attn.hook_pattern", "blocks.2.attn.hook_q_shear", "blocks.1.hook_resid_post",
           "hook_embed"]
  logits_u, cache_u = unscanned.run_with_cache(tokens, names_filter=names)
  logits_s, cache_s = scanned.run_with_cache(tokens, names_filter=names)
  assert sorted(cache_s) == sorted(names)
  np.testing.assert_allclose(logits_s, logits_u, rtol=1e-5, atol=1e-5)
  for name in names:
    np.testing.assert_allclose(cache_s[name], cache_u[name], rtol=1e-5, atol=1e-5, err_msg=name)
  uniform = lambda pattern, name: jnp.tril(jnp.ones_like(pattern)) / jnp.arange(
      1, pattern.shape[-1] + 1)[:, None]
  hooks = [("blocks.1.attn.hook_pattern", uniform)]
  edited_u = unscanned.run_with_hooks(tokens, fwd_hooks=hooks)
  edited_s = scanned.run_with_hooks(tokens, fwd_hooks=hooks)
  np.testing.assert_allclose(edited_s, edited_u, rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(edited_s - logits_s))) > 1e-3
  # An empty filter records nothing: the scan runs, with the same logits.
  np.testing.assert_allclose(scanned.run_with_cache(tokens, names_filter=())[0], logits_s,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("changes", [{"attention_params": PER_LAYER_GAMMA},
                                     {"attention": "softmax", "attention_params": {},
                                      "flux_router": True, "flux_window": 4}])
def test_a_scanned_model_decodes_like_its_full_pass(changes):
  unscanned, scanned = _pair(**changes)
  scanned.eval()
  unscanned.eval()
  tokens = _tokens(seq=10)
  assert all(x.shape[0] == 3  # stacked per layer
             for x in jax.tree.leaves(init_cache(scanned, 2, 12).layers))
  step = nnx.jit(decode)

  def decoded(model):
    cache, pieces = init_cache(model, 2, 12), []
    for start, stop in [(0, 6), *((t, t + 1) for t in range(6, 10))]:
      logits, cache = step(model, tokens[:, start:stop], cache)
      pieces.append(logits)
    return jnp.concatenate(pieces, axis=1)

  # A flux layer decodes with the one decision its prefill makes per sequence, where the full
  # pass decides per token: its reference is the unscanned model decoding the same way.
  expected = decoded(unscanned) if changes.get("flux_router") else unscanned(tokens)
  np.testing.assert_allclose(decoded(scanned), expected, rtol=1e-5, atol=1e-5)
  # A decoding step's hooks fire under each layer's name, as unscanned.
  cache_s, cache_u = init_cache(scanned, 2, 12), init_cache(unscanned, 2, 12)
  name = "blocks.2.hook_resid_post"
  _, captured_s, _ = scanned.run_with_cache(tokens, name, decode_state=cache_s)
  _, captured_u, _ = unscanned.run_with_cache(tokens, name, decode_state=cache_u)
  np.testing.assert_allclose(captured_s[name], captured_u[name], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(generate(scanned, tokens[:, :4], 5),
                                generate(unscanned, tokens[:, :4], 5))


def test_learned_attention_values_name_every_layer():
  unscanned, scanned = _pair(attention="momentum_learned", attention_params={})
  assert scanned.learned_attention_values() == pytest.approx(unscanned.learned_attention_values())
  assert "gamma/layer2/1" in scanned.learned_attention_values()


@pytest.mark.parametrize("changes,match", [
    ({"attention": ["momentum", "softmax", "momentum"],
      "attention_params": [{"gamma": 0.5}, {}, {"gamma": 0.5}]}, r"attention differs"),
    ({"attention": "momentum_learned",
      "attention_params": [{"gamma": 0.5}, {}, {}]}, r"different attention_params names"),
    ({"attention_params": [{"gamma": 0.5}, {"gamma": 1}, {"gamma": 0.5}]},
     r"attention_params\['gamma'\] per layer is \[0.5, 1, 0.5\]"),
    ({"remat": "dots"}, r"remat must be one of \('none', 'full', 'save_dots'\)"),
    ({"scan_layers": 1}, r"scan_layers must be a bool"),
])
def test_what_cannot_share_one_scan_body_is_named(changes, match):
  scan = {} if "scan_layers" in changes else {"scan_layers": True}
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(BASE, **scan, **changes)


def test_layer_statistics_refuse_scanned_and_rematerialised_layers():
  for changes in ({"scan_layers": True}, {"remat": "full"}):
    model = Transformer(dataclasses.replace(BASE, **changes), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"scan_layers=False and remat='none'"):
      value_grad_and_layer_stats(lambda m: m(_tokens()).mean(), model)


def test_conversions_refuse_the_wrong_layout():
  model = Transformer(BASE, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unstack_layers needs a scanned model"):
    unstack_layers(model)
  with pytest.raises(ValueError, match="stack_layers needs an unscanned model"):
    stack_layers(stack_layers(model))
  with pytest.raises(ValueError, match="attention differs"):
    stack_layers(Transformer(dataclasses.replace(
        BASE, attention=["momentum", "softmax", "softmax"],
        attention_params=[{"gamma": 0.5}, {}, {}]), rngs=nnx.Rngs(0)))
  assert len(unstack_state(nnx.state(stack_layers(model).blocks))) == 3


def test_stacked_weights_stay_split_for_the_compute_pass():
  mesh = AbstractMesh((1, 4, 2), MESH_AXES)
  model = nnx.eval_shape(lambda: Transformer(dataclasses.replace(
      BASE, scan_layers=True, d_model=64, num_heads=4, num_kv_heads=4), rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  stored = param_shardings(params, mesh)
  compute = compute_shardings(stored)
  spec = lambda tree, *path: tree[path[0]][path[1]][path[2]][path[3]].get_value().spec
  assert spec(stored, "blocks", "attn", "q_proj", "kernel") == P(None, "fsdp", "tensor")
  assert spec(compute, "blocks", "attn", "q_proj", "kernel") == P(None, "fsdp", "tensor")
  assert spec(compute, "blocks", "mlp", "down", "kernel") == P(None, "tensor", "fsdp")
  embedding = compute["embed"]["embedding"].get_value()
  assert isinstance(embedding, NamedSharding) and embedding.spec == P(None, None)


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["none", "save_dots"])
def test_placed_layer_weights_keep_values_and_gradients(remat):
  """FSDP's per-layer gather (one device here: the program, not the memory) changes nothing."""
  model = Transformer(dataclasses.replace(BASE, scan_layers=True, remat=remat), rngs=nnx.Rngs(2))
  graphdef, params = nnx.split(model)
  tokens = _tokens()
  grad = lambda p: jax.value_and_grad(lambda p: _loss(nnx.merge(graphdef, p), tokens)[0])(p)
  plain = jax.jit(lambda p: grad(p))(params)
  with layer_weight_placement(gather_one_layer(make_mesh((1, 1, 1)))):
    assert layer_weights_placed()
    program = str(jax.make_jaxpr(lambda p: grad(p))(params))
    placed = jax.jit(lambda p: grad(p))(params)  # a new function: traced here, in the context
  assert not layer_weights_placed()
  assert "sharding_constraint" in program and "placed_layer_weight" in program
  _assert_trees_close(placed, plain, 1e-6)


@pytest.mark.slow
def test_a_scanned_run_resumes_itself_and_refuses_an_unscanned_checkpoint_by_name(tmp_path):
  from momentum_jax.data import InductionTask
  from momentum_jax.train import TrainConfig, train

  task = InductionTask(vocab_size=16, segment_len=3, max_gap=2)
  config = TransformerConfig(vocab_size=16, context_len=task.seq_len, num_layers=2, d_model=32,
                             num_heads=2, mlp_dim=32, attention="momentum",
                             attention_params={"gamma": 0.5})
  scanned = dataclasses.replace(config, scan_layers=True, remat="full")
  cfg = TrainConfig(steps=6, batch_size=4, learning_rate=3e-3, eval_every=0, eval_batches=1,
                    log_every=1, checkpoint_every=3, tensorboard=False)
  whole = train(scanned, cfg, task, tmp_path / "whole", progress=False)
  train(scanned, dataclasses.replace(cfg, steps=3), task, tmp_path / "halves", progress=False)
  resumed = train(scanned, cfg, task, tmp_path / "halves", progress=False)
  _assert_trees_close(resumed.params, whole.params, 0)
  assert resumed.params["blocks"]["attn"]["q_proj"]["kernel"][...].shape == (2, 32, 32)
  unscanned = train(config, cfg, task, tmp_path / "unscanned", progress=False)
  np.testing.assert_allclose(
      [r["train_loss"] for r in unscanned.history if "train_loss" in r],
      [r["train_loss"] for r in whole.history if "train_loss" in r], rtol=1e-5)
  with pytest.raises(ValueError, match=r"model\.scan_layers: saved False vs current True"):
    train(scanned, dataclasses.replace(cfg, steps=9), task, tmp_path / "unscanned",
          progress=False)


_EIGHT_DEVICES = """
import contextlib, dataclasses, json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.nn.partitioning import layer_weight_placement
from momentum_jax.train import TrainConfig
from momentum_jax.train.sharding import (
    batch_sharding, compute_shardings, gather_one_layer, make_mesh, param_shardings)
from momentum_jax.train.step import init_train_state, step_config, train_step

task = InductionTask(vocab_size=16, segment_len=3, max_gap=2)
model = TransformerConfig(vocab_size=16, context_len=task.seq_len, num_layers=3, d_model=64,
                          num_heads=4, mlp_dim=64, attention="momentum",
                          attention_params={"gamma": 0.5}, scan_layers=True)
cfg = TrainConfig(batch_size=8, learning_rate=3e-3)

def losses(shape, per_layer):
  mesh = make_mesh(shape, jax.devices()[:int(np.prod(shape))])
  graphdef, state, placement = init_train_state(
      model, dataclasses.replace(cfg, mesh_shape=shape), mesh, batch_sharding(mesh, 8),
      jax.random.key(0))
  trace = contextlib.nullcontext()
  if per_layer:
    placement = placement._replace(compute_params=tuple(jax.tree.leaves(
        compute_shardings(param_shardings(state.params, mesh)))))
    trace = layer_weight_placement(gather_one_layer(mesh))
  params, opt_state, rest = state.params, state.opt_state, state.rest
  out = []
  with trace:
    for step in range(3):
      params, opt_state, rest, metrics = train_step(
          params, opt_state, rest, jax.random.key(1), jnp.int32(step), graphdef=graphdef,
          cfg=step_config(cfg), task=task, placement=placement)
      out.append(float(metrics["train_loss"]))
  return out

print(json.dumps({"one": losses((1, 1, 1), False), "whole": losses((1, 8, 1), False),
                  "per_layer": losses((1, 8, 1), True)}))
"""


@pytest.mark.slow
def test_per_layer_gathering_on_eight_devices_trains_like_one_device():
  import json
  import os
  import subprocess
  import sys

  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES], env=env, check=True,
                       capture_output=True, text=True).stdout
  losses = json.loads(out.strip().splitlines()[-1])
  assert np.all(np.isfinite(losses["one"]))
  np.testing.assert_allclose(losses["whole"], losses["one"], rtol=1e-5)
  np.testing.assert_allclose(losses["per_layer"], losses["one"], rtol=1e-5)

"""Placement rules on abstract meshes (no devices needed): the logical axes of every weight map
to FSDP and tensor-parallel splits, sizes that do not divide stay replicated, the optimizer state
follows its parameter, FSDP gathers drop only the fsdp splits, and bad meshes are refused."""

import jax
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, NamedSharding
from jax.sharding import PartitionSpec as P

from momentum_jax.nn import Transformer, TransformerConfig
from momentum_jax.optim import mkor_adamw
from momentum_jax.train import MESH_AXES, make_mesh, opt_state_shardings, param_shardings
from momentum_jax.train.sharding import gathered

CONFIG = TransformerConfig(vocab_size=30, context_len=8, num_layers=1, d_model=64, num_heads=4,
                           mlp_dim=128, attention="momentum", attention_params={"gamma": 0.5})


def _abstract_params(config=CONFIG):
  return nnx.state(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))), nnx.Param)


def _specs(shardings):
  return {jax.tree_util.keystr(path).replace(".value", ""): s.spec
          for path, s in jax.tree_util.tree_leaves_with_path(shardings)}


def test_every_weight_is_split_by_its_logical_axes():
  specs = _specs(param_shardings(_abstract_params(), AbstractMesh((1, 2, 2), MESH_AXES)))
  block = "['blocks'][0]"
  assert specs == {
      f"{block}['attn']['q_proj']['kernel']": P("fsdp", "tensor"),
      f"{block}['attn']['k_proj']['kernel']": P("fsdp", "tensor"),
      f"{block}['attn']['v_proj']['kernel']": P("fsdp", "tensor"),
      f"{block}['attn']['o_proj']['kernel']": P("tensor", "fsdp"),
      f"{block}['mlp']['up']['kernel']": P("fsdp", "tensor"),
      f"{block}['mlp']['down']['kernel']": P("tensor", "fsdp"),
      f"{block}['attn_norm']['scale']": P("fsdp"),
      f"{block}['mlp_norm']['scale']": P("fsdp"),
      "['embed']['embedding']": P(None, "fsdp"),  # the vocabulary axis is never split
      "['final_norm']['scale']": P("fsdp"),
  }


def test_a_size_that_does_not_divide_stays_replicated_and_axes_of_size_one_are_dropped():
  config = TransformerConfig(vocab_size=30, context_len=8, num_layers=1, d_model=36,
                             num_heads=3, mlp_dim=72)
  specs = _specs(param_shardings(_abstract_params(config), AbstractMesh((1, 8, 1), MESH_AXES)))
  assert specs["['blocks'][0]['mlp']['up']['kernel']"] == P(None, None)  # 36 % 8, tensor 1
  assert specs["['embed']['embedding']"] == P(None, None)


def test_learned_variant_parameters_carry_no_names_and_are_replicated():
  config = TransformerConfig(vocab_size=30, context_len=8, num_layers=1, d_model=64,
                             num_heads=4, mlp_dim=128, attention="kv_shift")
  specs = _specs(param_shardings(_abstract_params(config), AbstractMesh((1, 2, 2), MESH_AXES)))
  assert specs["['blocks'][0]['attn']['variant_params']['alpha']"] == P()


@pytest.mark.parametrize("make_tx", [lambda: optax.adamw(1e-3), lambda: mkor_adamw(1e-3)],
                         ids=["adamw", "mkor"])
def test_the_optimizer_state_follows_its_parameters(make_tx):
  mesh = AbstractMesh((1, 2, 2), MESH_AXES)
  params = _abstract_params()
  params_sharding = param_shardings(params, mesh)
  tx = make_tx()
  opt_specs = _specs(opt_state_shardings(tx, jax.eval_shape(tx.init, params), params_sharding,
                                         mesh))
  param_specs = _specs(params_sharding)
  # Adam's mu and nu of each parameter: a leaf whose path ends with the parameter's path.
  moments = {path: param for path in opt_specs for param in param_specs if path.endswith(param)}
  assert len(moments) == 2 * len(param_specs), sorted(opt_specs)
  for path, param in moments.items():
    assert opt_specs[path] == param_specs[param], path
  # The rest (counts, MKOR's factor inverses and reset flags) is replicated.
  others = [path for path in opt_specs if path not in moments]
  assert others and all(opt_specs[path] == P() for path in others)


def test_fsdp_gathers_drop_only_the_fsdp_splits():
  mesh = AbstractMesh((2, 2, 2), MESH_AXES)
  assert gathered(NamedSharding(mesh, P("fsdp", "tensor"))).spec == P(None, "tensor")
  assert gathered(NamedSharding(mesh, P("tensor", "fsdp"))).spec == P("tensor", None)
  assert gathered(NamedSharding(mesh, P())).spec == P()


@pytest.mark.parametrize("shape, match", [
    ((2, 2), r"mesh_shape must be three ints >= 1"),
    ((1, 0, 1), r"mesh_shape must be three ints >= 1"),
    ((2, 1, 1), r"mesh_shape=\(2, 1, 1\) has 2 devices but there are 1"),
])
def test_a_mesh_that_does_not_fit_the_devices_is_refused(shape, match):
  with pytest.raises(ValueError, match=match):
    make_mesh(shape, jax.devices()[:1])

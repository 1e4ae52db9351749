"""TrainConfig.weight_decay_mask: which leaves of a Transformer's parameters are decayed, by name,
and the decay the optimizer applies to each."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from momentum_jax.nn import Transformer, TransformerConfig
from momentum_jax.train import TrainConfig, make_optimizer, weight_decay_mask_fn

# Every kind of parameter the model has: dense kernels (attention, MLP, gate, router, an untied
# unembedding), a router bias, RMSNorm scales, attention sinks, a learned γ per kv head and the
# token embedding.
MODEL = TransformerConfig(vocab_size=16, context_len=8, num_layers=2, d_model=16, num_heads=2,
                          mlp_dim=32, attention="momentum_learned", learnable_sinks=True,
                          tie_embeddings=False, gate="headwise", flux_router=True, flux_window=4)


def _params():
  return nnx.split(Transformer(MODEL, rngs=nnx.Rngs(0)), nnx.Param, ...)[1]


def _names(tree) -> dict[str, object]:
  """``{"blocks/0/attn/q_proj/kernel": leaf, ...}`` over the array (or bool) leaves."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                   for k in path if getattr(k, "name", None) != "value"): leaf
          for path, leaf in flat}


def _decayed(mask: str) -> set[str]:
  return {name for name, decayed in _names(weight_decay_mask_fn(mask)(_params())).items()
          if decayed}


def test_matrices_are_the_dense_kernels_and_the_embedding():
  names = set(_names(_params()))
  kernels = {n for n in names if n.endswith("/kernel")}
  assert {"blocks/0/attn/q_proj/kernel", "blocks/1/mlp/down/kernel", "unembed/kernel",
          "blocks/0/attn/gate/proj/kernel", "blocks/0/attn/flux/proj/kernel"} <= kernels
  assert _decayed("matrices") == kernels | {"embed/embedding"}
  assert _decayed("matrices_except_embeddings") == kernels
  # What is left undecayed: norm scales, the router's bias, sinks and the learned γ.
  assert names - _decayed("matrices") == {
      *(f"blocks/{i}/{norm}/scale" for i in (0, 1) for norm in ("attn_norm", "mlp_norm")),
      "final_norm/scale", *(f"blocks/{i}/attn/flux/proj/bias" for i in (0, 1)),
      *(f"blocks/{i}/attn/sinks" for i in (0, 1)),
      *(f"blocks/{i}/attn/variant_params/gamma" for i in (0, 1))}


def test_all_decays_as_optax_default():
  assert weight_decay_mask_fn("all") is None
  with pytest.raises(ValueError, match="mask must be one of"):
    weight_decay_mask_fn("norms")


@pytest.mark.parametrize("mask", ["all", "matrices", "matrices_except_embeddings"])
def test_adamw_decays_exactly_the_masked_leaves(mask):
  # With zero gradients Adam's step is 0, so the update is the decay alone: −lr · wd · θ.
  params = _params()
  tx = make_optimizer(TrainConfig(optimizer="adamw", learning_rate=0.1, weight_decay=0.5,
                                  weight_decay_mask=mask))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, jax.jit(tx.init)(params), params)
  decayed = set(_names(params)) if mask == "all" else _decayed(mask)
  for name, (update, param) in {n: (u, _names(params)[n])
                                for n, u in _names(updates).items()}.items():
    want = -0.05 * np.asarray(param) if name in decayed else np.zeros(param.shape)
    np.testing.assert_allclose(np.asarray(update), want, rtol=1e-6, atol=0, err_msg=name)


def test_stacked_layers_decay_the_same_leaves_by_name():
  # Scanned layers stack each block's variables on a leading axis: a norm scale is then 2-D, and
  # the mask, by name, still leaves it undecayed.
  scanned = nnx.split(Transformer(dataclasses.replace(MODEL, scan_layers=True),
                                  rngs=nnx.Rngs(0)), nnx.Param, ...)[1]
  decayed = _names(weight_decay_mask_fn("matrices")(scanned))
  shapes = {name: np.shape(leaf) for name, leaf in _names(scanned).items()}
  scales = [name for name in shapes if name.endswith("/scale") and len(shapes[name]) == 2]
  assert scales and not any(decayed[name] for name in scales)
  assert {name for name, d in decayed.items() if d} == {
      name for name in shapes if name.endswith("/kernel") or name == "embed/embedding"}

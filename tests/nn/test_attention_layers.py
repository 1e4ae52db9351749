"""Attention layers with their own parameters: gated attention, Mixture-of-Head routing, the α
projection of affine-scaled attention and the flux layer router, alone and inside the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import momentum_jax.attention as attn
from momentum_jax.attention.affine import affine_attention
from momentum_jax.core.alibi import alibi_slopes
from momentum_jax.nn import Transformer, TransformerConfig
from momentum_jax.nn.affine import AffineAlpha, AlphaEma
from momentum_jax.nn.flux_router import FluxRouter, prefix_mean, sparsity_loss
from momentum_jax.nn.gated import AttentionGate
from momentum_jax.nn.moh import MoHRouter, load_balance_loss

D, N, H = 16, 4, 6


def _config(**overrides) -> TransformerConfig:
  base = dict(vocab_size=19, context_len=11, num_layers=1, d_model=D, num_heads=N,
              num_kv_heads=2, head_dim=H)
  base.update(overrides)
  return TransformerConfig(**base)


def _tokens(batch=2, seq=9, seed=0):
  return jax.random.randint(jax.random.key(seed), (batch, seq), 0, 19)


def _x(batch=2, seq=7, seed=1):
  return jax.random.normal(jax.random.key(seed), (batch, seq, D))


# --- gated attention --------------------------------------------------------------------------


@pytest.mark.parametrize("mode,width", [("elementwise", H), ("headwise", 1)])
def test_gate_is_sigmoid_of_projection(mode, width):
  gate = AttentionGate(D, N, H, mode, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x, z = _x(), jax.random.normal(jax.random.key(2), (2, 7, N, H))
  expected = jax.nn.sigmoid(x @ gate.proj.kernel[...]).reshape(2, 7, N, width)
  np.testing.assert_allclose(gate.gate(x), expected, rtol=1e-6)
  np.testing.assert_allclose(gate(x, z), z * expected, rtol=1e-6)


def test_gate_in_model_multiplies_z_before_the_output_projection():
  model = Transformer(_config(gate="headwise"), rngs=nnx.Rngs(0))
  layer = model.blocks[0].attn
  layer.gate.proj.kernel[...] = jnp.zeros_like(layer.gate.proj.kernel[...])  # σ(0) = 1/2
  _, cache = model.run_with_cache(_tokens())
  np.testing.assert_array_equal(cache["blocks.0.attn.hook_gate"], 0.5)
  z = cache["blocks.0.attn.hook_z"].reshape(2, 9, N * H)
  np.testing.assert_allclose(cache["blocks.0.hook_attn_out"], 0.5 * layer.o_proj(z), rtol=1e-5,
                             atol=1e-6)


# --- Mixture-of-Head --------------------------------------------------------------------------


def test_load_balance_loss_hand_values():
  probs = jnp.asarray([[0.75, 0.25], [0.75, 0.25]])
  # me = (0.75, 0.25), ce = (1, 0): E² · mean(me · ce) = 4 · 0.375.
  assert float(load_balance_loss(probs, jnp.asarray([[1.0, 0.0], [1.0, 0.0]]))) == 1.5
  balanced = jnp.asarray([[0.75, 0.25], [0.25, 0.75]])
  assert float(load_balance_loss(balanced, jnp.asarray([[1.0, 0.0], [0.0, 1.0]]))) == 1.0


def test_moh_gates_top_k_renormalised_and_two_stage():
  router = MoHRouter(D, N, shared_heads=1, top_k=2, dtype=jnp.float32, rngs=nnx.Rngs(3))
  x = _x()
  gates, loss = router(x)
  assert gates.shape == (2, 7, N)
  alpha = 2 * jax.nn.softmax(x @ router.balance.kernel[...], axis=-1)
  np.testing.assert_allclose(gates[..., 0], alpha[..., 0], rtol=1e-5)  # one shared head: h_s = 1
  routed = np.asarray(gates[..., 1:])
  assert ((routed > 0).sum(-1) == 2).all()  # exactly top_k routed heads active per token
  np.testing.assert_allclose(routed.sum(-1), 2 * alpha[..., 1], rtol=1e-5)  # k · α2
  probs = jax.nn.softmax(x @ router.routed.kernel[...], axis=-1)
  top = np.argsort(-np.asarray(probs), axis=-1)[..., :2]
  chosen = np.zeros(probs.shape)
  np.put_along_axis(chosen, top, 1.0, axis=-1)
  kept = np.asarray(probs) * chosen
  np.testing.assert_allclose(routed, 2 * kept / kept.sum(-1, keepdims=True)
                             * np.asarray(alpha[..., 1:]), rtol=1e-5)
  np.testing.assert_allclose(loss, load_balance_loss(probs, jnp.asarray(chosen)), rtol=1e-6)


def test_moh_shared_only_and_routed_only():
  shared = MoHRouter(D, N, shared_heads=N, top_k=1, dtype=jnp.float32, rngs=nnx.Rngs(0))
  gates, loss = shared(_x())
  np.testing.assert_allclose(gates.sum(-1), N, rtol=1e-5)
  assert float(loss) == 0.0 and shared.routed is None and shared.balance is None
  routed = MoHRouter(D, N, shared_heads=0, top_k=1, dtype=jnp.float32, rngs=nnx.Rngs(0))
  gates, _ = routed(_x())
  np.testing.assert_allclose(gates.max(-1), 1.0, rtol=1e-6)  # top-1: the chosen head gets k = 1
  assert ((np.asarray(gates) > 0).sum(-1) == 1).all()


def test_moh_router_gets_gradients_from_loss_and_output():
  router = MoHRouter(D, N, shared_heads=2, top_k=1, dtype=jnp.float32, rngs=nnx.Rngs(0))
  grads = nnx.grad(lambda r: jnp.sum(r(_x())[0] * jnp.arange(N)) + r(_x())[1])(router)
  for name in ("routed", "shared", "balance"):
    assert float(jnp.abs(grads[name]["kernel"][...]).sum()) > 0, name


# --- affine-scaled attention ------------------------------------------------------------------


def test_alpha_projection_and_running_mean():
  layer = AffineAlpha(D, N, rngs=nnx.Rngs(0))
  x = 20 * _x()
  alpha, alpha_ma = layer(x)
  expected = np.clip(0.1 * np.asarray(x @ layer.proj.kernel[...]) + 0.5, 0, 1)
  np.testing.assert_allclose(alpha, expected, rtol=1e-6)
  assert float(alpha.min()) == 0.0 and float(alpha.max()) == 1.0  # the clip is active
  np.testing.assert_allclose(alpha_ma, 0.9 * 0.5 + 0.1 * expected.mean((0, 1)), rtol=1e-6)
  np.testing.assert_allclose(layer.alpha_ma[...], alpha_ma)
  layer.eval()
  _, frozen = layer(_x(seed=5))
  np.testing.assert_array_equal(frozen, alpha_ma)
  # α_ma gets no gradient and is not a parameter.
  assert "alpha_ma" not in nnx.state(layer, nnx.Param)
  assert isinstance(layer.alpha_ma, AlphaEma)
  grad = jax.grad(lambda x: layer(x)[1].sum())(x)
  np.testing.assert_array_equal(grad, 0.0)


def test_affine_model_uses_alpha_updates_alpha_ma_in_training_and_reduces_to_softmax():
  model = Transformer(_config(attention="affine"), rngs=nnx.Rngs(0))
  ema = model.blocks[0].attn.affine.alpha_ma
  model(_tokens(seed=4))  # training mode: α_ma moves
  trained = np.asarray(ema[...])
  assert not np.allclose(trained, 0.5)
  model.eval()
  _, cache = model.run_with_cache(_tokens())
  np.testing.assert_array_equal(ema[...], trained)  # evaluation mode: frozen
  p = "blocks.0.attn."
  q, k, v = cache[p + "hook_rot_q"], cache[p + "hook_rot_k"], cache[p + "hook_v"]
  z = affine_attention(q, k, v, alpha_BxTxN=cache[p + "hook_alpha"], alpha_ma=trained)
  np.testing.assert_allclose(cache[p + "hook_z"], z, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cache[p + "hook_pattern"].sum(-1),
                             np.broadcast_to(trained[None, :, None], (2, N, 9)), rtol=1e-5)
  np.testing.assert_array_equal(
      affine_attention(q, k, v, alpha_BxTxN=1.0, alpha_ma=1.0), attn.softmax_attention(q, k, v))


# --- flux layer router ------------------------------------------------------------------------


def test_prefix_mean_restarts_at_segments():
  x = _x(batch=1, seq=6)
  seg = jnp.asarray([[0, 0, 0, 3, 3, 7]])
  pooled = np.asarray(prefix_mean(x, seg))
  np.testing.assert_allclose(pooled[0, 2], x[0, :3].mean(0), rtol=1e-6)
  np.testing.assert_allclose(pooled[0, 4], x[0, 3:5].mean(0), rtol=1e-6)
  np.testing.assert_allclose(pooled[0, 5], x[0, 5], rtol=1e-6)
  np.testing.assert_allclose(prefix_mean(x)[0, 5], x[0].mean(0), rtol=1e-6)


def test_flux_straight_through_gradients_and_hard_eval():
  router = FluxRouter(D, rngs=nnx.Rngs(0))
  x = _x()
  choice = router(x)
  np.testing.assert_array_equal(np.sort(np.asarray(choice), -1)[..., 0] < 1e-6, True)
  np.testing.assert_allclose(choice.sum(-1), 1.0, rtol=1e-6)
  assert set(np.unique(np.round(np.asarray(choice), 6))) <= {0.0, 1.0}
  weights = jnp.asarray([1.0, -1.0])
  grads = nnx.grad(lambda r: jnp.sum(r(x) * weights))(router)
  assert float(jnp.abs(grads["proj"]["kernel"][...]).sum()) > 0  # straight-through: flows
  router.eval()
  hard = router(x)
  logits = prefix_mean(x) @ router.proj.kernel[...] + router.proj.bias[...]
  np.testing.assert_array_equal(hard, jax.nn.one_hot(jnp.argmax(logits, -1), 2))
  np.testing.assert_array_equal(router(x), hard)
  grads = nnx.grad(lambda r: jnp.sum(r(x) * weights))(router)
  np.testing.assert_array_equal(grads["proj"]["kernel"][...], 0.0)


def test_sparsity_loss_hand_value():
  choice = jnp.asarray([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]])
  np.testing.assert_allclose(sparsity_loss(choice, 0.5), 0.0625)


def test_flux_model_all_sparse_is_sliding_window_and_causal():
  model = Transformer(_config(flux_router=True, flux_window=3), rngs=nnx.Rngs(0))
  model.eval()
  router = model.blocks[0].attn.flux
  router.proj.bias[...] = jnp.asarray([-100.0, 100.0])
  tokens = _tokens()
  logits, cache = model.run_with_cache(tokens)
  p = "blocks.0.attn."
  np.testing.assert_array_equal(cache[p + "hook_router"][..., 1], 1.0)
  z = attn.softmax_attention(cache[p + "hook_rot_q"], cache[p + "hook_rot_k"], cache[p + "hook_v"],
                             window=3)
  np.testing.assert_allclose(cache[p + "hook_z"], z, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(jnp.tril(cache[p + "hook_pattern"], k=-3)).max()) == 0.0
  changed = tokens.at[:, 5:].set((tokens[:, 5:] + 3) % 19)
  np.testing.assert_allclose(model(changed)[:, :5], logits[:, :5], rtol=1e-6, atol=1e-6)


# --- the model with each option ---------------------------------------------------------------

OPTIONS = [
    {"gate": "elementwise"},
    {"moh": True, "moh_shared_heads": 1, "moh_top_k": 2},
    {"attention": "affine"},
    {"flux_router": True, "flux_window": 4},
]


@pytest.mark.slow
@pytest.mark.parametrize("options", OPTIONS)
def test_model_forward_grad_and_aux_loss(options):
  model = Transformer(_config(**options), rngs=nnx.Rngs(0))
  tokens = _tokens()

  def loss_fn(m):
    logits, aux = m.logits_and_aux_loss(tokens)
    return jnp.mean(logits**2) + aux["total"], aux

  (_, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  flat = jax.tree.leaves(nnx.state(grads, nnx.Param))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in flat)
  layer = grads["blocks"][0]["attn"]
  own = {"gate": "gate", "moh": "moh", "attention": "affine", "flux_router": "flux"}
  name = own[next(iter(options))]
  assert float(jnp.abs(layer[name]["proj" if name != "moh" else "routed"]["kernel"][...]).sum()) > 0
  cfg = model.config
  if cfg.moh:
    np.testing.assert_allclose(aux["total"], cfg.moh_loss_weight * aux["moh_load_balance"])
  elif cfg.flux_router:
    np.testing.assert_allclose(aux["total"], cfg.flux_loss_weight * aux["flux_sparsity"])
  else:
    assert float(aux["total"]) == 0.0
  # Causal with every option: tokens after t leave the logits up to t unchanged.
  model.eval()
  changed = tokens.at[:, 5:].set((tokens[:, 5:] + 3) % 19)
  np.testing.assert_allclose(model(changed)[:, :5], model(tokens)[:, :5], rtol=1e-5, atol=1e-6)


def test_defaults_build_the_same_model_and_round_trip():
  plain = _config()
  assert (plain.gate, plain.moh, plain.flux_router, plain.causal) == ("none", False, False, True)
  a = nnx.state(Transformer(plain, rngs=nnx.Rngs(0)), nnx.Param)
  names = {".".join(map(str, path)) for path, _ in nnx.to_flat_state(a)}
  assert not any(part in name for name in names for part in ("gate", "moh", "affine", "flux"))
  cfg = _config(gate="headwise", moh=True, moh_shared_heads=2, moh_top_k=1, moh_loss_weight=0.1,
                flux_router=True, flux_window=5, flux_target=0.25, attention="affine")
  again = TransformerConfig.from_dict(cfg.to_dict())
  assert again == cfg and hash(again) == hash(cfg)


@pytest.mark.parametrize("overrides,words", [
    ({"gate": "sigmoid"}, "gate must be one of"),
    ({"moh": True, "moh_shared_heads": 5}, "moh_shared_heads must be in"),
    ({"moh": True, "moh_shared_heads": 1, "moh_top_k": 4}, "moh_top_k must be in"),
    ({"flux_router": True, "window": 3}, "flux_router chooses"),
    ({"flux_router": True, "flux_target": 1.5}, "flux_target must be in"),
    ({"attention": "agent"}, "needs causal=False"),
    ({"causal": False, "window": 3}, "needs causal=True"),
    ({"moh_loss_weight": -1.0}, "moh_loss_weight must be"),
])
def test_bad_layer_options(overrides, words):
  with pytest.raises(ValueError, match=words):
    _config(**overrides)


# --- learned parameters of registered variants ------------------------------------------------

LEARNED = [
    ("lightning", {}, {"decay": (N,)}),
    ("flash_bias", {}, {"q_bias": (1, 11, N, 4), "k_bias": (1, 11, 2, 4)}),
    ("agent", {"causal": False, "attention_params": {"num_agents": 3}},
     {"agent_bias": (1, N, 1, 11)}),
]


@pytest.mark.slow
@pytest.mark.parametrize("attention,options,shapes", LEARNED)
def test_learned_variant_params_in_model(attention, options, shapes):
  model = Transformer(_config(attention=attention, **options), rngs=nnx.Rngs(0))
  params = model.blocks[0].attn.variant_params
  assert {name: p[...].shape for name, p in params.items()} == shapes
  tokens = _tokens()  # 9 tokens of a context of 11: per-position tables are gathered
  _, cache = model.run_with_cache(tokens)
  p = "blocks.0.attn."
  q, k, v = cache[p + "hook_rot_q"], cache[p + "hook_rot_k"], cache[p + "hook_v"]
  variant = attn.get_attention(attention)
  if attention == "lightning":  # stored as log, starts at the ALiBi default
    np.testing.assert_allclose(jnp.exp(params["decay"][...]), alibi_slopes(N), rtol=1e-6)
    expected = variant.fn(q, k, v)
  elif attention == "flash_bias":
    expected = variant.fn(q, k, v, q_bias=jnp.tile(params["q_bias"][:, :9], (2, 1, 1, 1)),
                          k_bias=jnp.tile(params["k_bias"][:, :9], (2, 1, 1, 1)))
  else:
    np.testing.assert_array_equal(params["agent_bias"][...], 0.0)
    expected = variant.fn(q, k, v, causal=False, num_agents=3)
  np.testing.assert_allclose(cache[p + "hook_z"], expected, rtol=2e-5, atol=1e-6)
  grads = nnx.grad(lambda m: jnp.mean(m(tokens) ** 2))(model)
  for name in shapes:
    g = grads["blocks"][0]["attn"]["variant_params"][name][...]
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0, name


def test_fixed_attention_params_are_not_learned():
  model = Transformer(_config(attention="lightning", attention_params={"decay": 0.1}),
                      rngs=nnx.Rngs(0))
  assert "decay" not in model.blocks[0].attn.variant_params


# --- run_with_hooks ---------------------------------------------------------------------------


def _momentum_model():
  return Transformer(_config(num_layers=2, attention="momentum", attention_params={"gamma": 0.5}),
                     rngs=nnx.Rngs(0))


def _grabber(seen):
  def grab(x, name):
    seen[name] = x
  return grab


def _prefix_mean_v(cache, prefix):
  v = jnp.repeat(cache[prefix + "hook_v"], 2, axis=2)  # GQA: query head n reads kv head n // 2
  return jnp.cumsum(v, axis=1) / jnp.arange(1, 10)[None, :, None, None]


def test_run_with_hooks_edits_the_pattern_under_jit():
  model, tokens = _momentum_model(), _tokens()
  p = "blocks.1.attn."
  identity = model.run_with_hooks(tokens, [(p + "hook_pattern", lambda x, name: x),
                                           (p + "hook_q_shear", lambda x, name: None)])
  np.testing.assert_allclose(identity, model(tokens), rtol=1e-5, atol=1e-5)
  uniform = lambda pattern, name: jnp.tril(jnp.ones_like(pattern)) / jnp.arange(1, 10)[:, None]
  seen = {}
  logits = model.run_with_hooks(tokens, [(p + "hook_pattern", uniform),
                                         (p + "hook_z", _grabber(seen))])
  _, cache = model.run_with_cache(tokens)
  np.testing.assert_allclose(seen[p + "hook_z"], _prefix_mean_v(cache, p), rtol=1e-5, atol=1e-5)
  assert not np.allclose(logits, identity, atol=1e-3)
  jitted = jax.jit(lambda t: model.run_with_hooks(t, [(p + "hook_pattern", uniform)]))(tokens)
  np.testing.assert_allclose(jitted, logits, rtol=1e-5, atol=1e-5)


def test_momentum_shear_hooks_capture_and_edit():
  model, tokens = _momentum_model(), _tokens()
  p = "blocks.0.attn."
  logits, cache = model.run_with_cache(tokens)
  np.testing.assert_allclose(logits, model(tokens), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cache[p + "hook_q_shear"],
                             attn.momentum_shear(cache[p + "hook_rot_q"], 0.5), rtol=1e-6)
  seen = {}  # k̂ = 0: uniform weights over the prefix
  model.run_with_hooks(tokens, [(p + "hook_k_shear", lambda x, name: jnp.zeros_like(x)),
                                (p + "hook_z", _grabber(seen))])
  np.testing.assert_allclose(seen[p + "hook_z"], _prefix_mean_v(cache, p), rtol=1e-5, atol=1e-5)


def test_hooks_are_differentiable_and_keep_shapes():
  model, tokens = _momentum_model(), _tokens()
  scaled = lambda s: model.run_with_hooks(
      tokens, [("blocks.0.hook_resid_post", lambda x, name: s * x)]).sum()
  assert float(jnp.abs(jax.grad(scaled)(1.0))) > 0
  with pytest.raises(ValueError, match="must keep the shape"):
    model.run_with_hooks(tokens, [("blocks.0.attn.hook_z", lambda x, name: x[:, :3])])

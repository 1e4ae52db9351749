"""Train-step time: the NNX model (as the trainer runs it) vs the same model as pure JAX.

    python -m momentum_jax.experiments.bench.train_step [--preset induction|lm] [--repeats 50]

Three Adam train steps on one fixed batch, measured side by side in one run:
  pure      a hand-written pure-pytree forward of the same transformer (the baseline a user
            would write without Flax);
  nnx       the model as the trainer runs it (``token_loss``): ``nnx.split`` once,
            ``nnx.merge`` inside a plain ``jax.jit``;
  nnx.jit   ``nnx.jit`` over the model and an ``nnx.Optimizer`` (NNX's graph traversal each step).
pure and nnx step with ``momentum_jax.train.step.optimizer_step``. The pure forward is first
checked to give the NNX model's loss. Method: jit, two warm-up calls, then the median wall time
of ``--repeats`` calls, each blocked until ready, the three candidates interleaved call by call
so that background load falls on all alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from momentum_jax.attention import get_attention
from momentum_jax.core.rope import apply_rope
from momentum_jax.data import Batch, InductionTask
from momentum_jax.experiments.bench.timing import interleaved_medians
from momentum_jax.nn import Transformer, TransformerConfig
from momentum_jax.train import masked_cross_entropy, masked_sums, optimizer_step, token_loss

PRESETS = {
    # The single-layer induction experiment's model and batch.
    "induction": dict(num_layers=1, d_model=128, num_heads=4, mlp_dim=0, batch=64),
    # A small language-model shape with MLPs.
    "lm": dict(num_layers=4, d_model=256, num_heads=4, mlp_dim=1024, batch=32),
}


def _rms_norm(x, scale, eps):
  x32 = x.astype(jnp.float32)
  return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps) * scale


def pure_forward(params: dict, tokens_BxT: jax.Array, cfg: TransformerConfig) -> jax.Array:
  """The transformer of ``momentum_jax.nn`` written as a function of a plain dict of arrays."""
  attend = get_attention(cfg.attention).fn
  b, t = tokens_BxT.shape
  x = params["embed"]["embedding"][tokens_BxT]
  for block in params["blocks"]:
    a = block["attn"]
    h = _rms_norm(x, block["attn_norm"]["scale"], cfg.norm_eps)
    q = (h @ a["q_proj"]["kernel"]).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = (h @ a["k_proj"]["kernel"]).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = (h @ a["v_proj"]["kernel"]).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    q, k = apply_rope(q, base=cfg.rope_base), apply_rope(k, base=cfg.rope_base)
    z = attend(q, k, v, causal=True, **dict(cfg.attention_params))
    x = x + z.reshape(b, t, -1) @ a["o_proj"]["kernel"]
    if cfg.mlp_dim:
      m = block["mlp"]
      h = _rms_norm(x, block["mlp_norm"]["scale"], cfg.norm_eps)
      x = x + jax.nn.gelu(h @ m["up"]["kernel"]) @ m["down"]["kernel"]
  x = _rms_norm(x, params["final_norm"]["scale"], cfg.norm_eps)
  return x @ params["embed"]["embedding"].T


def run(preset: str, attention: str, repeats: int) -> dict[str, float]:
  spec = PRESETS[preset]
  task = InductionTask()
  params_kw = {"gamma": 0.5} if attention == "momentum" else {}
  cfg = TransformerConfig(vocab_size=task.vocab_size, context_len=task.seq_len,
                          num_layers=spec["num_layers"], d_model=spec["d_model"],
                          num_heads=spec["num_heads"], mlp_dim=spec["mlp_dim"],
                          attention=attention, attention_params=params_kw)
  batch: Batch = task.sample(jax.random.key(1), spec["batch"])
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  tx = optax.adam(3e-3)

  # NNX, as the trainer runs it: split once, merge inside a plain jax.jit.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  nnx_loss = token_loss(graphdef)

  # Pure pytree: the same numbers as a plain nested dict of arrays.
  pure_params = jax.tree.map(lambda v: v[...], nnx.to_pure_dict(params))
  pure_params["blocks"] = [pure_params["blocks"][i] for i in range(cfg.num_layers)]

  def pure_loss(p, rest, batch: Batch):
    sums = masked_sums(pure_forward(p, batch.tokens, cfg), batch)
    return sums["loss_sum"] / jnp.maximum(sums["count"], 1.0), (sums, rest)

  np.testing.assert_allclose(float(pure_loss(pure_params, rest, batch)[0]),
                             float(nnx_loss(params, rest, batch)[0]), rtol=1e-5)
  state = {"pure": (pure_params, rest, tx.init(pure_params)),
           "nnx": (params, rest, tx.init(params))}

  def call(name, loss):
    """One call of ``optimizer_step`` on ``loss``, jitted, on the fixed batch."""
    step = jax.jit(optimizer_step(loss, tx))

    def go():
      state[name] = step(*state[name], batch)[:3]
      return state[name]
    return go

  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def nnx_jit_step(model, optimizer):
    grads = nnx.grad(lambda m: masked_cross_entropy(m(batch.tokens), batch))(model)
    optimizer.update(model, grads)

  return interleaved_medians({
      "pure": call("pure", pure_loss),
      "nnx": call("nnx", nnx_loss),
      "nnx.jit": lambda: nnx_jit_step(model, optimizer) or nnx.state(model, nnx.Param),
  }, repeats)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), nargs="+",
                      default=["induction", "lm"])
  parser.add_argument("--attention", default="momentum")
  parser.add_argument("--repeats", type=int, default=50)
  args = parser.parse_args(argv)
  print(f"backend={jax.default_backend()} attention={args.attention} repeats={args.repeats}")
  print(f"{'preset':<11}{'pure ms':>9}{'nnx ms':>9}{'nnx.jit ms':>12}{'nnx/pure':>10}"
        f"{'nnx.jit/pure':>14}")
  results = {}
  for preset in args.preset:
    t = run(preset, args.attention, args.repeats)
    results[preset] = t
    print(f"{preset:<11}{t['pure'] * 1e3:>9.2f}{t['nnx'] * 1e3:>9.2f}{t['nnx.jit'] * 1e3:>12.2f}"
          f"{t['nnx'] / t['pure']:>10.3f}{t['nnx.jit'] / t['pure']:>14.3f}")
  return results


if __name__ == "__main__":
  main()

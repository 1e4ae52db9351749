"""Mixture-of-Head attention (Jin et al., "MoH: Multi-Head Attention as Mixture-of-Head
Attention", arXiv 2410.11842): a per-token router scales each head's output before the output
projection, following the authors' ``MoHAttention`` (``SkyworkAI/MoH``, MoH-DiT).

Heads 0..h_s−1 are shared (always active), the other E = N − h_s heads are routed. For a token x:

    g        = softmax(W_r x)                          routed-head scores, [E]
    m        = top-k indicator of g                    k = ``top_k`` routed heads per token
    g_routed = k · (g ⊙ m) / max(Σ g ⊙ m, eps)         renormalised over the chosen heads, × k
    g_shared = h_s · softmax(W_s x)                    (W_s exists when h_s > 1; one shared head: 1)
    [α1, α2] = 2 · softmax(W_h x)                      two-stage balance (when h_s > 0 and E > 0)
    gates    = [α1 · g_shared, α2 · g_routed]          [N], multiplies head n's output z_n

With only shared heads (E = 0) the gates are g_shared. The load-balance loss over the T' = B·T
tokens of the batch is

    me_e = mean_tokens g_e,   ce_e = mean_tokens m_e,   L_lb = E² · mean_e(me_e · ce_e),

which is k for a perfectly balanced router (me_e = 1/E, ce_e = k/E). Every head is still
computed (the gates zero the unchosen routed heads); skipping them needs a sparse kernel and is
not done here. The authors add L_lb in training only; here it is always returned, and the model
adds ``moh_loss_weight · L_lb`` to its auxiliary loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from momentum_jax.nn.dense import Dense


class MoHRouter(nnx.Module):
  """Per-token head gates of Mixture-of-Head attention and the router's load-balance loss.

  Args:
    d_model: width D of the layer input.
    num_heads: query heads N.
    shared_heads: h_s, heads always active (0 ≤ h_s ≤ N).
    top_k: routed heads active per token (1 ≤ k ≤ N − h_s when N − h_s > 0).
    dtype: compute dtype of the router projections.
    rngs: initialisation keys.
  """

  def __init__(self, d_model: int, num_heads: int, shared_heads: int, top_k: int, *,
               dtype: jax.typing.DTypeLike, rngs: nnx.Rngs):
    routed = num_heads - shared_heads
    if not 0 <= shared_heads <= num_heads:
      raise ValueError(
          f"shared_heads must be in [0, num_heads={num_heads}], got shared_heads={shared_heads}")
    if routed and not 1 <= top_k <= routed:
      raise ValueError(
          f"top_k must be in [1, {routed}] (the routed heads num_heads - shared_heads), "
          f"got top_k={top_k}")
    dense = lambda o: Dense(d_model, o, use_bias=False, dtype=dtype, rngs=rngs)
    self.shared_heads = shared_heads
    self.routed_heads = routed
    self.top_k = top_k
    self.routed = dense(routed) if routed else None
    self.shared = dense(shared_heads) if shared_heads > 1 else None
    self.balance = dense(2) if routed and shared_heads else None

  def __call__(self, x_BxTxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Head gates ``[B, T, N]`` (float32) and the load-balance loss (float32 scalar; 0 without
    routed heads)."""
    b, t, _ = x_BxTxD.shape
    parts = []
    loss = jnp.float32(0.0)
    if self.shared_heads:
      if self.shared is None:
        shared_BxTxS = jnp.ones((b, t, 1), jnp.float32)
      else:
        shared_BxTxS = jax.nn.softmax(self.shared(x_BxTxD).astype(jnp.float32), axis=-1)
      parts.append(self.shared_heads * shared_BxTxS)
    if self.routed is not None:
      probs_BxTxE = jax.nn.softmax(self.routed(x_BxTxD).astype(jnp.float32), axis=-1)
      _, top_BxTxK = jax.lax.top_k(probs_BxTxE, self.top_k)
      chosen_BxTxE = jnp.sum(jax.nn.one_hot(top_BxTxK, self.routed_heads), axis=-2)
      kept_BxTxE = probs_BxTxE * chosen_BxTxE
      denom_BxTx1 = jnp.maximum(jnp.sum(kept_BxTxE, axis=-1, keepdims=True),
                                jnp.finfo(jnp.float32).eps)
      parts.append(self.top_k * kept_BxTxE / denom_BxTx1)
      loss = load_balance_loss(probs_BxTxE, chosen_BxTxE)
    if self.balance is not None:
      alpha_BxTx2 = 2.0 * jax.nn.softmax(self.balance(x_BxTxD).astype(jnp.float32), axis=-1)
      parts = [alpha_BxTx2[..., :1] * parts[0], alpha_BxTx2[..., 1:] * parts[1]]
    return jnp.concatenate(parts, axis=-1), loss


def load_balance_loss(probs_BxTxE: jax.Array, chosen_BxTxE: jax.Array) -> jax.Array:
  """Switch-style load-balance loss of MoH, E² · mean_e(me_e · ce_e).

  Args:
    probs_BxTxE: router probabilities softmax(W_r x) over the E routed heads.
    chosen_BxTxE: 0/1 indicator of the top-k heads of each token.

  Returns:
    float32 scalar; me and ce average over every leading (token) axis.
  """
  experts = probs_BxTxE.shape[-1]
  me_E = jnp.mean(probs_BxTxE.reshape(-1, experts), axis=0)
  ce_E = jnp.mean(chosen_BxTxE.reshape(-1, experts).astype(jnp.float32), axis=0)
  return jnp.mean(me_E * ce_E) * experts * experts

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

which is k for a perfectly balanced router (me_e = 1/E, ce_e = k/E). The authors add L_lb in
training only; here it is always returned, and the model adds ``moh_loss_weight · L_lb`` to its
auxiliary loss.

Compute skipping (:func:`routed_head_attention`, the model's ``moh_capacity_factor``): the dense
form computes every head and lets the gates zero the unchosen routed heads. The routed form
computes a routed head only at the query rows of the tokens that chose it, MoE-style with a fixed
capacity per routed head and sequence (Switch Transformer, arXiv 2101.03961):

    C = min(T, ⌈capacity_factor · T · k / E⌉)             query rows per routed head

Priority is by position: token t keeps head e iff it chose e and fewer than C earlier tokens of
its sequence did (:func:`head_slots`), so a token's output never depends on later tokens and the
model stays causal (priority by gate value would let later tokens evict earlier ones). A dropped
assignment gets the head's output as zero; the share of the B·T·k assignments dropped is
:func:`dropped_fraction`. Head e's kept rows are gathered, attend to all of the head's keys
under the causal / window / segment masks of their own positions, and are scattered back times
their gate, so the result equals the dense form with the gates of dropped assignments zeroed
(:func:`kept_gates`), and the dense-gated form itself when nothing is dropped. Softmax attention
on (prepared) q and k only (:data:`ROUTED_ATTENTION`). Attention cost per sequence, in query
rows × keys: h_s · T² + E · C · T instead of N · T².
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from momentum_jax.attention.softmax import softmax_attention
from momentum_jax.nn.dense import Dense

#: The attention variants whose routed heads :func:`routed_head_attention` computes: softmax
#: attention on q and k after the variant's ``prepare`` step (momentum's shear). The registry
#: does not say which variants are softmax on prepared q and k, so they are named here; a model
#: config with ``moh_capacity_factor`` and another variant raises ``ValueError``.
ROUTED_ATTENTION = ("softmax", "momentum", "momentum_learned")


class HeadRoute(NamedTuple):
  """The router's decision for a batch.

  Attributes:
    gates_BxTxN: float32 head gates (shared heads first), as ``MoHRouter.__call__`` gives them.
    chosen_BxTxE: bool, the top-k routed heads of each token (E = N − h_s, possibly 0).
    loss: float32 load-balance loss (0 without routed heads).
  """

  gates_BxTxN: jax.Array
  chosen_BxTxE: jax.Array
  loss: jax.Array


class HeadSlots(NamedTuple):
  """The query rows each routed head computes under a capacity C (:func:`head_slots`).

  Attributes:
    index_BxExC: int32 positions; the kept tokens of head e in position order, then other
      positions (all distinct) that fill the unused slots.
    valid_BxExC: bool, the slot holds a kept token.
    kept_BxTxE: bool, token t chose routed head e and is within its capacity.
  """

  index_BxExC: jax.Array
  valid_BxExC: jax.Array
  kept_BxTxE: jax.Array


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
    route = self.route(x_BxTxD)
    return route.gates_BxTxN, route.loss

  def route(self, x_BxTxD: jax.Array) -> HeadRoute:
    """The gates, the chosen routed heads and the load-balance loss (:class:`HeadRoute`)."""
    b, t, _ = x_BxTxD.shape
    chosen_BxTxE = jnp.zeros((b, t, self.routed_heads), bool)
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
      chosen_BxTxE = chosen_BxTxE > 0
    if self.balance is not None:
      alpha_BxTx2 = 2.0 * jax.nn.softmax(self.balance(x_BxTxD).astype(jnp.float32), axis=-1)
      parts = [alpha_BxTx2[..., :1] * parts[0], alpha_BxTx2[..., 1:] * parts[1]]
    return HeadRoute(jnp.concatenate(parts, axis=-1), chosen_BxTxE, loss)


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


def head_capacity(seq_len: int, top_k: int, routed_heads: int, capacity_factor: float) -> int:
  """Query rows per routed head and sequence, C = min(T, ⌈capacity_factor · T · k / E⌉).

  Raises ``ValueError`` unless ``capacity_factor`` is a finite number > 0 and
  ``1 <= top_k <= routed_heads``.
  """
  if (isinstance(capacity_factor, bool) or not isinstance(capacity_factor, (int, float))
      or not (capacity_factor > 0 and math.isfinite(capacity_factor))):
    raise ValueError(f"capacity_factor must be a finite number > 0, got "
                     f"capacity_factor={capacity_factor!r}")
  if not 1 <= top_k <= routed_heads:
    raise ValueError(f"top_k must be in [1, routed_heads={routed_heads}], got top_k={top_k}")
  return min(seq_len, math.ceil(capacity_factor * seq_len * top_k / routed_heads))


def head_slots(chosen_BxTxE: jax.Array, capacity: int) -> HeadSlots:
  """The rows each routed head computes: the first ``capacity`` tokens (by position) that chose
  it, per sequence.

  Args:
    chosen_BxTxE: bool (or 0/1), token t chose routed head e.
    capacity: C, 1 <= C <= T.

  Returns:
    :class:`HeadSlots`; ``index_BxExC[b, e, :n]`` are the n kept positions in order and the
    remaining slots hold distinct positions that were not kept, so the C indices of a head are
    distinct.
  """
  if chosen_BxTxE.ndim != 3:
    raise ValueError(f"chosen must be [B, T, E], got chosen.shape={chosen_BxTxE.shape}")
  t = chosen_BxTxE.shape[1]
  if not 1 <= capacity <= t:
    raise ValueError(f"capacity must be in [1, T={t}], got capacity={capacity}")
  chosen_BxTxE = chosen_BxTxE.astype(bool)
  rank_BxTxE = jnp.cumsum(chosen_BxTxE, axis=1, dtype=jnp.int32) - 1
  kept_BxTxE = chosen_BxTxE & (rank_BxTxE < capacity)
  position_T = jnp.arange(t, dtype=jnp.int32)
  # Kept tokens sort first, in position order; the rest after them, also distinct.
  key_BxExT = jnp.where(kept_BxTxE, position_T[:, None], t + position_T[:, None]).swapaxes(1, 2)
  index_BxExC = jnp.argsort(key_BxExT, axis=-1)[..., :capacity].astype(jnp.int32)
  kept_BxE = jnp.sum(kept_BxTxE, axis=1, dtype=jnp.int32)
  valid_BxExC = jnp.arange(capacity, dtype=jnp.int32) < kept_BxE[..., None]
  return HeadSlots(index_BxExC, valid_BxExC, kept_BxTxE)


def dropped_fraction(chosen_BxTxE: jax.Array, kept_BxTxE: jax.Array) -> jax.Array:
  """Float32 share of the (token, chosen routed head) assignments over capacity (0 when there are
  none)."""
  chosen = jnp.sum(chosen_BxTxE.astype(jnp.float32))
  dropped = chosen - jnp.sum(kept_BxTxE.astype(jnp.float32))
  return dropped / jnp.maximum(chosen, 1.0)


def kept_gates(gates_BxTxN: jax.Array, kept_BxTxE: jax.Array) -> jax.Array:
  """The gates with the routed heads' (the last E) zeroed where the assignment was not kept: the
  gates under which the dense form equals :func:`routed_head_attention`."""
  shared = gates_BxTxN.shape[-1] - kept_BxTxE.shape[-1]
  return jnp.concatenate(
      [gates_BxTxN[..., :shared],
       gates_BxTxN[..., shared:] * kept_BxTxE.astype(gates_BxTxN.dtype)], axis=-1)


def routed_head_attention(
    q_BxTxNxH: jax.Array,
    k_BxTxKxH: jax.Array,
    v_BxTxKxH: jax.Array,
    gates_BxTxN: jax.Array,
    slots: HeadSlots,
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    sinks: jax.Array | None = None,
    implementation: str | None = None,
) -> jax.Array:
  """Gated MoH softmax attention that computes each routed head only at its slots' rows.

  The first h_s = N − E heads are shared: ``softmax_attention`` over all rows (its fast route),
  times their gates. Routed head n = h_s + e at the C rows t_c = ``slots.index_BxExC[b, e, c]``:

      z_{t_c, n} = gate_{t_c, n} · valid_c · Σ_s softmax_s(l_{t_c s}) v_{s, n},
      l_{t_c s} = q_{t_c, n}·k_{s, n} / √H   over the keys s visible from position t_c

  (causal s <= t_c, window t_c − w < s <= t_c, equal segment ids; a sink adds e^{sink_n} to the
  denominator), scattered to row t_c; every other row of head n is zero. With ``gates_BxTxN``
  the :func:`kept_gates` this equals ``softmax_attention(q, k, v, ...) · gates`` (the dense
  form), outputs and gradients, as the tests check. Cost: h_s · T² + E · C · T logits per
  sequence instead of N · T². Query head n reads kv head n // (N / K) (GQA).

  Args:
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH: self-attention inputs (q and k after RoPE and the variant's
      ``prepare``); K divides N.
    gates_BxTxN: head gates, shared heads first.
    slots: the routed heads' rows (:func:`head_slots`), E = ``slots.index_BxExC.shape[1]``.
    causal, window, segment_ids, sinks: as in ``softmax_attention`` (``sinks`` is ``[N]``).
    implementation: the shared heads' ``softmax_attention`` route; the routed heads always run
      the gathered XLA form above.

  Returns:
    ``[B, T, N, H]`` in q's dtype, already multiplied by the gates.
  """
  b, t, n, h = q_BxTxNxH.shape
  kv_heads = k_BxTxKxH.shape[2]
  e, capacity = slots.index_BxExC.shape[1:]
  if (k_BxTxKxH.shape != v_BxTxKxH.shape or k_BxTxKxH.shape[:2] != (b, t)
      or k_BxTxKxH.shape[3] != h or n % kv_heads):
    raise ValueError(f"k and v must be [B, T, K, H] with K dividing N, for q.shape="
                     f"{q_BxTxNxH.shape}, got k.shape={k_BxTxKxH.shape}, v.shape={v_BxTxKxH.shape}")
  if gates_BxTxN.shape != (b, t, n):
    raise ValueError(f"gates must be [B, T, N] = {(b, t, n)}, got gates.shape={gates_BxTxN.shape}")
  if slots.index_BxExC.shape[0] != b or not 1 <= e <= n or slots.kept_BxTxE.shape != (b, t, e):
    raise ValueError(f"slots must hold [B, E, C] rows and [B, T, E] kept flags with B={b}, T={t}, "
                     f"1 <= E <= N={n}, got index.shape={slots.index_BxExC.shape}, "
                     f"kept.shape={slots.kept_BxTxE.shape}")
  if window is not None and not causal:
    raise ValueError(f"window={window} needs causal=True, got causal=False")
  shared = n - e
  kv_N = jnp.arange(n) // (n // kv_heads)
  gates_BxTxN = gates_BxTxN.astype(jnp.float32)
  parts = []
  if shared:
    z_BxTxSxH = softmax_attention(
        q_BxTxNxH[:, :, :shared], jnp.take(k_BxTxKxH, kv_N[:shared], axis=2),
        jnp.take(v_BxTxKxH, kv_N[:shared], axis=2), causal=causal, window=window,
        segment_ids=segment_ids, sinks=None if sinks is None else sinks[:shared],
        implementation=implementation)
    parts.append((z_BxTxSxH * gates_BxTxN[..., :shared, None]).astype(q_BxTxNxH.dtype))
  parts.append(_routed_rows(
      q_BxTxNxH[:, :, shared:], jnp.take(k_BxTxKxH, kv_N[shared:], axis=2),
      jnp.take(v_BxTxKxH, kv_N[shared:], axis=2), gates_BxTxN[..., shared:], slots,
      causal=causal, window=window, segment_ids=segment_ids,
      sinks=None if sinks is None else sinks[shared:]).astype(q_BxTxNxH.dtype))
  return jnp.concatenate(parts, axis=2)


def _routed_rows(q_BxTxExH: jax.Array, k_BxTxExH: jax.Array, v_BxTxExH: jax.Array,
                 gates_BxTxE: jax.Array, slots: HeadSlots, *, causal: bool, window: int | None,
                 segment_ids: jax.Array | None, sinks: jax.Array | None) -> jax.Array:
  """Float32 ``[B, T, E, H]``: each routed head's softmax attention at its slots' rows, times
  the gate, scattered back (zero elsewhere)."""
  b, t, e, h = q_BxTxExH.shape
  index_BxExC = slots.index_BxExC
  b_Bx1x1 = jnp.arange(b)[:, None, None]
  e_1xEx1 = jnp.arange(e)[None, :, None]
  q_BxExCxH = q_BxTxExH[b_Bx1x1, index_BxExC, e_1xEx1]
  logits_BxExCxT = jnp.einsum("bech,bseh->becs", q_BxExCxH, k_BxTxExH,
                              preferred_element_type=jnp.float32) * h**-0.5
  key_T = jnp.arange(t)
  visible_BxExCxT = None
  if causal:
    row_BxExCx1 = index_BxExC[..., None]
    visible_BxExCxT = key_T <= row_BxExCx1
    if window is not None:
      visible_BxExCxT &= key_T > row_BxExCx1 - window
  if segment_ids is not None:
    row_segment_BxExCx1 = segment_ids[b_Bx1x1, index_BxExC][..., None]
    same_BxExCxT = row_segment_BxExCx1 == segment_ids[:, None, None, :]
    visible_BxExCxT = same_BxExCxT if visible_BxExCxT is None else visible_BxExCxT & same_BxExCxT
  if visible_BxExCxT is not None:  # every row sees its own key, so no row is empty
    logits_BxExCxT = jnp.where(visible_BxExCxT, logits_BxExCxT, -jnp.inf)
  max_BxExCx1 = jnp.max(logits_BxExCxT, axis=-1, keepdims=True)
  if sinks is not None:
    sink_1xEx1x1 = sinks.astype(jnp.float32)[None, :, None, None]
    max_BxExCx1 = jnp.maximum(max_BxExCx1, sink_1xEx1x1)
  max_BxExCx1 = jax.lax.stop_gradient(max_BxExCx1)
  exp_BxExCxT = jnp.exp(logits_BxExCxT - max_BxExCx1)
  denom_BxExCx1 = jnp.sum(exp_BxExCxT, axis=-1, keepdims=True)
  if sinks is not None:
    denom_BxExCx1 = denom_BxExCx1 + jnp.exp(sink_1xEx1x1 - max_BxExCx1)
  out_BxExCxH = jnp.einsum("becs,bseh->bech", exp_BxExCxT, v_BxTxExH.astype(jnp.float32))
  gate_BxExC = gates_BxTxE[b_Bx1x1, index_BxExC, e_1xEx1] * slots.valid_BxExC
  out_BxExCxH = out_BxExCxH * (gate_BxExC[..., None] / denom_BxExCx1)
  # The C indices of a head are distinct: the scatter writes each row at most once.
  return jnp.zeros((b, t, e, h), jnp.float32).at[b_Bx1x1, index_BxExC, e_1xEx1].add(
      out_BxExCxH, unique_indices=True)

"""Agent attention (Han et al., "Agent Attention: On the Integration of Softmax and Linear
Attention", arXiv 2312.08874): n_a ≪ T agent tokens first gather from the keys, then broadcast
to the queries:

    A   = pool(Q)                                 agents: adaptive average pooling of q over T
    V_A = softmax(scale · A Kᵀ + B1) V             [n_a, H] per head   (agent aggregation)
    O   = softmax(scale · Q Aᵀ + B2) V_A           [T, H] per head     (agent broadcast)

with optional learnable biases B1 ``[N, n_a, S]`` and B2 ``[N, T, n_a]``. Adaptive pooling bin i
covers positions floor(i·T/n_a) <= t < ceil((i+1)·T/n_a), as in PyTorch's ``AdaptiveAvgPool``.
Time and memory are O((T + S)·n_a) per head; no T×S array is built. The method is non-causal
(every agent summarises all queries and keys). The depthwise convolution on V that the authors add
for images is not part of this function.

As a learned parameter of ``"agent"``'s registration, the agent bias B1 is a per-head,
per-key-position table ``[1, N, 1, context_len]`` shared by the agents (zero init,
:func:`zero_agent_bias`), gathered at a batch's key positions by :func:`key_columns_at_positions`.
The query bias B2 varies over the agents, whose number is a fixed parameter of the variant the
initialiser does not see, and a B2 constant over agents cancels in its softmax, so B2 is not
learned.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.registry import (
    AttentionDims, AttentionVariant, LearnedLayout, register_attention,
)
from momentum_jax.core.checks import (
    broadcasts_to, check_attention_inputs, check_floating, check_unsupported,
)
from momentum_jax.core.heads import repeat_kv


def _check_agent(
    q: jax.Array, k: jax.Array, *, causal: bool, num_agents: int, segment_ids: jax.Array | None,
    agent_bias: jax.Array | None, query_bias: jax.Array | None,
) -> None:
  if causal:
    raise ValueError("agent attention is non-causal: pass causal=False, got causal=True")
  if segment_ids is not None:
    raise ValueError(
        f"segment_ids are not supported by agent attention, "
        f"got segment_ids.shape={np.shape(segment_ids)}"
    )
  if (isinstance(num_agents, bool) or not isinstance(num_agents, (int, np.integer))
      or num_agents < 1):
    raise ValueError(f"num_agents must be a positive int, got num_agents={num_agents!r}")
  batch, seq_q, heads, _ = q.shape
  seq_k = k.shape[1]
  for name, value, target in (("agent_bias", agent_bias, (batch, heads, num_agents, seq_k)),
                              ("query_bias", query_bias, (batch, heads, seq_q, num_agents))):
    if value is None:
      continue
    check_floating(name, value)
    if not broadcasts_to(value, target):
      raise ValueError(
          f"{name} must be broadcastable to {target} (that is [N, {target[2]}, {target[3]}] or "
          f"[B, N, {target[2]}, {target[3]}]), got {name}.shape={value.shape}"
      )


def pooling_matrix(seq: int, num_agents: int) -> np.ndarray:
  """``[n_a, T]`` float32 adaptive average pooling: row i averages positions
  floor(i·T/n_a) <= t < ceil((i+1)·T/n_a)."""
  i = np.arange(num_agents)
  start, end = (i * seq) // num_agents, -((-(i + 1) * seq) // num_agents)
  t = np.arange(seq)
  inside = (t[None] >= start[:, None]) & (t[None] < end[:, None])
  return (inside / (end - start)[:, None]).astype(np.float32)


def agent_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    causal: bool = False,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    num_agents: int = 16,
    agent_bias: jax.Array | None = None,
    query_bias: jax.Array | None = None,
) -> jax.Array:
  """Agent attention as two softmax attentions through ``num_agents`` pooled queries.

      A = pool(Q),  V_A = softmax(scale·A Kᵀ + B1) V,  O = softmax(scale·Q Aᵀ + B2) V_A

  GQA: agents are pooled per query head; agent head n reads kv head n // (N // K).

  Args:
    q_BxTxNxH: queries (after any RoPE).
    k_BxSxKxH: keys; K divides N.
    v_BxSxKxH: values.
    causal: must be False (agent attention is non-causal); True raises ``ValueError``.
    window, segment_ids, bias, sinks: not supported; anything but None raises ``ValueError``.
    scale: logit scale of both softmaxes, default ``1 / sqrt(H)``.
    num_agents: n_a, the number of pooled agent tokens (n_a > T repeats queries).
    agent_bias: B1, broadcastable to ``[B, N, n_a, S]`` (the authors' ``[N, n_a, S]``).
    query_bias: B2, broadcastable to ``[B, N, T, n_a]``.

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  check_unsupported("agent", window=window, bias=bias, sinks=sinks)
  _check_agent(q_BxTxNxH, k_BxSxKxH, causal=causal, num_agents=num_agents,
               segment_ids=segment_ids, agent_bias=agent_bias, query_bias=query_bias)
  seq_q, _, head_dim = q_BxTxNxH.shape[1:]
  scale = head_dim**-0.5 if scale is None else scale
  dtype = q_BxTxNxH.dtype
  pool_AxT = jnp.asarray(pooling_matrix(seq_q, num_agents), dtype)
  agents_BxAxNxH = jnp.einsum("at,btnh->banh", pool_AxT, q_BxTxNxH)
  cast = lambda b: None if b is None else b.astype(dtype)
  agent_v_BxAxNxH = jax.nn.dot_product_attention(
      agents_BxAxNxH, k_BxSxKxH, v_BxSxKxH, bias=cast(agent_bias), scale=scale)
  return jax.nn.dot_product_attention(
      q_BxTxNxH, agents_BxAxNxH, agent_v_BxAxNxH, bias=cast(query_bias), scale=scale)


def agent_attention_reference(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    causal: bool = False,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    num_agents: int = 16,
    agent_bias: jax.Array | None = None,
    query_bias: jax.Array | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 reference of :func:`agent_attention` with explicit einsums and softmaxes.

  With ``return_weights`` returns ``(out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)`` in float32:
  weights are the effective T×S mixing matrix W = softmax(scale·Q Aᵀ + B2) · softmax(scale·A Kᵀ
  + B1) (rows sum to 1, out = W v) and scores = log W, so that softmax(scores) = W.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  check_unsupported("agent", window=window, bias=bias, sinks=sinks)
  _check_agent(q_BxTxNxH, k_BxSxKxH, causal=causal, num_agents=num_agents,
               segment_ids=segment_ids, agent_bias=agent_bias, query_bias=query_bias)
  seq_q, heads, head_dim = q_BxTxNxH.shape[1:]
  scale = head_dim**-0.5 if scale is None else scale
  hi = jax.lax.Precision.HIGHEST
  q32 = q_BxTxNxH.astype(jnp.float32)
  k32 = repeat_kv(k_BxSxKxH.astype(jnp.float32), heads)
  v32 = repeat_kv(v_BxSxKxH.astype(jnp.float32), heads)
  agents_BxAxNxH = jnp.einsum("at,btnh->banh", pooling_matrix(seq_q, num_agents), q32,
                              precision=hi)

  def softmax(logits):
    exp = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
    return exp / jnp.sum(exp, axis=-1, keepdims=True)

  agent_logits_BxNxAxS = scale * jnp.einsum("banh,bsnh->bnas", agents_BxAxNxH, k32, precision=hi)
  query_logits_BxNxTxA = scale * jnp.einsum("btnh,banh->bnta", q32, agents_BxAxNxH, precision=hi)
  if agent_bias is not None:
    agent_logits_BxNxAxS = agent_logits_BxNxAxS + agent_bias.astype(jnp.float32)
  if query_bias is not None:
    query_logits_BxNxTxA = query_logits_BxNxTxA + query_bias.astype(jnp.float32)
  gather_BxNxAxS = softmax(agent_logits_BxNxAxS)
  broadcast_BxNxTxA = softmax(query_logits_BxNxTxA)
  agent_v_BxAxNxH = jnp.einsum("bnas,bsnh->banh", gather_BxNxAxS, v32, precision=hi)
  out_BxTxNxH = jnp.einsum("bnta,banh->btnh", broadcast_BxNxTxA, agent_v_BxAxNxH, precision=hi)
  out_BxTxNxH = out_BxTxNxH.astype(q_BxTxNxH.dtype)
  if return_weights:
    weights_BxNxTxS = jnp.einsum("bnta,bnas->bnts", broadcast_BxNxTxA, gather_BxNxAxS,
                                 precision=hi)
    return out_BxTxNxH, jnp.log(weights_BxNxTxS), weights_BxNxTxS
  return out_BxTxNxH


def zero_agent_bias(dims: AttentionDims, key: jax.Array) -> jax.Array:
  """``[1, N, 1, context_len]`` zeros: agent attention's B1 per head and key position."""
  del key
  return jnp.zeros((1, dims.num_heads, 1, dims.context_len), jnp.float32)


def key_columns_at_positions(table_1xNx1xC: jax.Array, positions_BxT: jax.Array) -> jax.Array:
  """``[1, N, 1, C]`` per-key table → ``[B, N, 1, S]``: column p of each key's position."""
  return jnp.moveaxis(table_1xNx1xC[0][..., positions_BxT], 2, 0)


register_attention(
    "agent",
    AttentionVariant(
        agent_attention, agent_attention_reference,
        params=("num_agents", "agent_bias", "query_bias"), learned={"agent_bias": zero_agent_bias},
        layouts={"agent_bias": LearnedLayout(at_positions=key_columns_at_positions)},
        masking="bidirectional",
    ),
)

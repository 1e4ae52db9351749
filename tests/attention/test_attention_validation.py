"""Bad inputs raise ValueError / TypeError naming the argument and the offending shape or value."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

import momentum_jax.attention as attn
from momentum_jax.attention.ema_value import ema_value_attention, ema_value_attention_reference
from momentum_jax.attention.kv_shift import kv_shift_attention, kv_shift_attention_reference

Q = jnp.ones((2, 7, 4, 24))
KV = jnp.ones((2, 7, 2, 24))
X = jnp.ones((2, 7, 4, 24))
softmax = attn.softmax_attention
momentum = attn.momentum_attention
ALL = [
    (softmax, {}),
    (attn.softmax_attention_reference, {}),
    (momentum, {"gamma": 0.5}),
    (attn.momentum_attention_reference, {"gamma": 0.5}),
    (kv_shift_attention, {"alpha": jnp.ones(2), "beta": jnp.ones(2)}),
    (kv_shift_attention_reference, {"alpha": jnp.ones(2), "beta": jnp.ones(2)}),
    (ema_value_attention, {"eta": 0.5}),
    (ema_value_attention_reference, {"eta": 0.5}),
]

# (error, message pattern, q, k, v, keyword arguments) for inputs every attention function rejects.
COMMON = [
    (ValueError, "q.shape=(7, 4, 24)", Q[0], KV, KV, {}),
    (ValueError, "k.shape=(2, 7, 2, 24, 1)", Q, KV[..., None], KV, {}),
    (ValueError, "k.shape=(2, 7, 2, 24) and v.shape=(2, 7, 2, 40)", Q, KV,
     jnp.ones((2, 7, 2, 40)), {}),
    (ValueError, "q.shape=(1, 7, 4, 24) and k.shape=(2, 7, 2, 24)", Q[:1], KV, KV, {}),
    (ValueError, "q.shape=(2, 7, 4, 24) and k.shape=(2, 7, 2, 40)", Q, jnp.ones((2, 7, 2, 40)),
     jnp.ones((2, 7, 2, 40)), {}),
    (ValueError, "q.shape=(2, 7, 4, 24) and k.shape=(2, 7, 3, 24)", Q, jnp.ones((2, 7, 3, 24)),
     jnp.ones((2, 7, 3, 24)), {}),
    (TypeError, "q.dtype=int32", Q.astype(jnp.int32), KV, KV, {}),
    (TypeError, "v.dtype=int32", Q, KV, KV.astype(jnp.int32), {}),
    (TypeError, "k.dtype=bfloat16", Q, KV.astype(jnp.bfloat16), KV, {}),
    (ValueError, "window=0", Q, KV, KV, {"window": 0}),
    (ValueError, "window=2.5", Q, KV, KV, {"window": 2.5}),
    (ValueError, "segment_ids.shape=(2, 6)", Q, KV, KV,
     {"segment_ids": jnp.zeros((2, 6), jnp.int32)}),
    (TypeError, "segment_ids.dtype=float32", Q, KV, KV, {"segment_ids": jnp.zeros((2, 7))}),
    (ValueError, "bias.shape=(3, 7, 7)", Q, KV, KV, {"bias": jnp.zeros((3, 7, 7))}),
    (ValueError, "sinks.shape=(2,)", Q, KV, KV, {"sinks": jnp.zeros(2)}),
]


@pytest.mark.parametrize("fn,params", ALL, ids=lambda x: getattr(x, "__name__", ""))
@pytest.mark.parametrize("error,message,q,k,v,kwargs", COMMON, ids=[c[1] for c in COMMON])
def test_common_errors(fn, params, error, message, q, k, v, kwargs):
  with pytest.raises(error, match=re.escape(message)):
    fn(q, k, v, **params, **kwargs)


def test_window_requires_causal():
  with pytest.raises(ValueError, match=r"window=3 requires causal=True"):
    softmax(Q, KV, KV, window=3, causal=False)


@pytest.mark.parametrize("fn", [momentum, attn.momentum_attention_reference])
def test_momentum_errors(fn):
  with pytest.raises(ValueError, match=r"gamma=-0.5"):
    fn(Q, KV, KV, gamma=-0.5)
  with pytest.raises(ValueError, match=r"gamma=\[0.5 nan\]"):
    fn(Q, KV, KV, gamma=np.array([0.5, np.nan]))
  with pytest.raises(ValueError, match=r"gamma.shape=\(3,\)"):
    fn(Q, KV, KV, gamma=jnp.ones(3))
  with pytest.raises(ValueError, match=r"boundary='reflect'"):
    fn(Q, KV, KV, gamma=0.5, boundary="reflect")
  with pytest.raises(TypeError, match=r"gamma must be a real number .*got gamma='0.5'"):
    fn(Q, KV, KV, gamma="0.5")


@pytest.mark.parametrize("fn", [attn.momentum_shear, attn.momentum_shear_reference])
def test_shear_errors(fn):
  with pytest.raises(ValueError, match=r"gamma=nan"):
    fn(X, float("nan"))
  with pytest.raises(ValueError, match=r"gamma.shape=\(2,\)"):
    fn(X, jnp.ones(2))
  with pytest.raises(ValueError, match=r"x.shape=\(7, 4, 24\)"):
    fn(X[0], 0.5)
  with pytest.raises(TypeError, match=r"x.dtype=int32"):
    fn(X.astype(jnp.int32), 0.5)
  with pytest.raises(ValueError, match=r"segment_ids.shape=\(1, 7\)"):
    fn(X, 0.5, segment_ids=jnp.zeros((1, 7), jnp.int32))
  with pytest.raises(ValueError, match=r"boundary=''"):
    fn(X, 0.5, boundary="")


@pytest.mark.parametrize("fn", [kv_shift_attention, kv_shift_attention_reference])
def test_kv_shift_errors(fn):
  with pytest.raises(ValueError, match=r"alpha.shape=\(3,\)"):
    fn(Q, KV, KV, alpha=jnp.ones(3), beta=jnp.ones(2))
  with pytest.raises(ValueError, match=r"beta.shape=\(4, 2\)"):
    fn(Q, KV, KV, alpha=jnp.ones(2), beta=jnp.ones((4, 2)))


@pytest.mark.parametrize("fn", [ema_value_attention, ema_value_attention_reference])
def test_ema_value_errors(fn):
  for eta in (0.0, 1.0, -0.2, float("nan")):
    with pytest.raises(ValueError, match=rf"eta={eta}"):
      fn(Q, KV, KV, eta=eta)
  with pytest.raises(ValueError, match=r"eta.shape=\(2,\)"):
    fn(Q, KV, KV, eta=jnp.full(2, 0.5))
  with pytest.raises(ValueError, match=r"causal=False"):
    fn(Q, KV, KV, eta=0.5, causal=False)
  with pytest.raises(ValueError, match=r"q.shape=\(2, 7, 4, 24\) and k.shape=\(2, 5, 2, 24\)"):
    fn(Q, KV[:, :5], KV[:, :5], eta=0.5)

"""AssociativeRecallTask (MQAR): layout, the mask against a NumPy re-derivation, config errors."""

import jax
import numpy as np
import pytest

from momentum_jax.data import AssociativeRecallTask

TASK = AssociativeRecallTask(vocab_size=16, num_pairs=5, num_queries=3)


def test_shapes_dtypes_and_determinism():
  batch = jax.device_get(TASK.sample(jax.random.key(0), 8))
  again = jax.device_get(jax.jit(TASK.sample, static_argnums=1)(jax.random.key(0), 8))
  assert TASK.seq_len == 2 * (5 + 3) - 1
  for name, dtype in [("tokens", np.int32), ("targets", np.int32), ("loss_mask", np.float32)]:
    assert getattr(batch, name).shape == (8, TASK.seq_len)
    assert getattr(batch, name).dtype == dtype
    np.testing.assert_array_equal(getattr(batch, name), getattr(again, name))
  other = jax.device_get(TASK.sample(jax.random.key(1), 8))
  assert not np.array_equal(batch.tokens, other.tokens)


def test_layout_and_mask():
  batch = jax.device_get(TASK.sample(jax.random.key(2), 64))
  half, p, q = TASK.vocab_size // 2, TASK.num_pairs, TASK.num_queries
  for tokens_T, targets_T, mask_T in zip(batch.tokens, batch.targets, batch.loss_mask):
    raw = np.concatenate([tokens_T, targets_T[-1:]])
    keys, values = raw[0 : 2 * p : 2], raw[1 : 2 * p : 2]
    queries, answers = raw[2 * p :: 2], raw[2 * p + 1 :: 2]
    assert len(set(keys.tolist())) == p and keys.max() < half
    assert values.min() >= half and values.max() < TASK.vocab_size
    assert len(set(queries.tolist())) == q
    bound = dict(zip(keys.tolist(), values.tolist()))
    assert [bound[k] for k in queries.tolist()] == answers.tolist()
    np.testing.assert_array_equal(np.nonzero(mask_T)[0], 2 * p + 2 * np.arange(q))
    for t in np.nonzero(mask_T)[0]:
      (earlier,) = np.nonzero(tokens_T[:t] == tokens_T[t])
      assert len(earlier) >= 1
      assert all(targets_T[s] == targets_T[t] for s in earlier)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(vocab_size=3, num_pairs=1, num_queries=1), "vocab_size=3"),
        (dict(vocab_size=16, num_pairs=9, num_queries=1), "num_pairs=9"),
        (dict(vocab_size=16, num_pairs=0, num_queries=1), "num_pairs=0"),
        (dict(vocab_size=16, num_pairs=4, num_queries=5), "num_queries=5"),
        (dict(vocab_size=16, num_pairs=4, num_queries=0), "num_queries=0"),
    ],
)
def test_bad_config_raises(kwargs, field):
  with pytest.raises(ValueError, match=field):
    AssociativeRecallTask(**kwargs)

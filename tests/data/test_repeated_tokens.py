"""repeated_random_tokens: a random sequence followed by itself."""

import jax
import numpy as np
import pytest

from momentum_jax.data import repeated_random_tokens


def test_repeats_and_is_deterministic():
  tokens = np.asarray(repeated_random_tokens(jax.random.key(0), 4, 10, 7))
  assert tokens.shape == (4, 20) and tokens.dtype == np.int32
  assert tokens.min() >= 0 and tokens.max() < 7
  np.testing.assert_array_equal(tokens[:, :10], tokens[:, 10:])
  np.testing.assert_array_equal(tokens, repeated_random_tokens(jax.random.key(0), 4, 10, 7))
  assert not np.array_equal(tokens, repeated_random_tokens(jax.random.key(1), 4, 10, 7))


@pytest.mark.parametrize(
    "args, field",
    [((0, 4, 8), "batch_size=0"), ((2, 0, 8), "seq_len=0"), ((2, 4, 1), "vocab_size=1")],
)
def test_bad_arguments_raise(args, field):
  with pytest.raises(ValueError, match=field):
    repeated_random_tokens(jax.random.key(0), *args)

"""Momentum optimisers as optax transforms (``optax.GradientTransformation``).

SPAM and Stable-SPAM (spike-aware Adam with momentum reset), adaptive memory momentum (AM-SGD,
AM-AdamW), MKOR (rank-1 K-FAC preconditioning), momentum (EMA) teachers and artificial gradient
spikes. This package depends on jax, optax and numpy only.
"""

from momentum_jax.optim.adaptive_momentum import (
    AdaptiveMemoryAdamState,
    AdaptiveMemoryState,
    adaptive_memory_beta,
    adaptive_memory_coefficient,
    am_adamw,
    am_sgd,
    scale_by_adaptive_memory_adam,
    scale_by_adaptive_memory_momentum,
)
from momentum_jax.optim.mkor import (
    MkorHState, MkorLayerState, MkorState, mkor, mkor_adamw, mkor_h)
from momentum_jax.optim.spam import ScaleBySpamState, scale_by_spam, spam
from momentum_jax.optim.spikes import InjectGradientSpikesState, inject_gradient_spikes
from momentum_jax.optim.stable_spam import ScaleByStableSpamState, scale_by_stable_spam, stable_spam
from momentum_jax.optim.teachers import (
    MomentumQueue,
    ema_momentum_schedule,
    ema_update,
    queue_init,
    queue_push,
    queue_valid_mask,
)

__all__ = [
    "AdaptiveMemoryAdamState",
    "AdaptiveMemoryState",
    "InjectGradientSpikesState",
    "MkorHState",
    "MkorLayerState",
    "MkorState",
    "MomentumQueue",
    "ScaleBySpamState",
    "ScaleByStableSpamState",
    "adaptive_memory_beta",
    "adaptive_memory_coefficient",
    "am_adamw",
    "am_sgd",
    "ema_momentum_schedule",
    "ema_update",
    "inject_gradient_spikes",
    "mkor",
    "mkor_adamw",
    "mkor_h",
    "queue_init",
    "queue_push",
    "queue_valid_mask",
    "scale_by_adaptive_memory_adam",
    "scale_by_adaptive_memory_momentum",
    "scale_by_spam",
    "scale_by_stable_spam",
    "spam",
    "stable_spam",
]

"""Pure attention functions in the layout of ``jax.nn.dot_product_attention`` and their registry.

Every variant has a fast form and a float32 reference of the same signature; importing this
package registers ``"softmax"``, ``"momentum"``, ``"kv_shift"``, ``"ema_value"``, ``"linear"``,
``"lightning"``, ``"flex"``, ``"sigmoid"``, ``"flash_bias"``, ``"flow"``, ``"agent"``,
``"affine"``, ``"radial"``, ``"grat"``, ``"ema_value_learned"``, ``"sla"``,
``"momentum_learned"`` (γ learned per layer and kv head) and the relaxations
``"deconstructed_mlp"``, ``"deconstructed_taylor"``, ``"deconstructed_self_gated"`` and
``"deconstructed_fixed_qk"``.
"""

import functools

from momentum_jax.attention.affine import affine_attention, affine_attention_reference
from momentum_jax.attention.agent import agent_attention, agent_attention_reference, pooling_matrix
from momentum_jax.attention.decoding import (
    DecodeContext, EmaCache, KVCache, ShiftCache, cache_bytes, cache_capacity, ema_value_decode,
    init_ema_cache, init_kv_cache, init_kv_shift_cache, init_momentum_cache,
    kv_cache_bytes_per_token, kv_shift_decode, momentum_decode, softmax_decode,
)
from momentum_jax.attention.decoding_recurrent import (
    LightningState, LinearState, init_lightning_state, init_linear_state, lightning_decode,
    linear_decode,
)
from momentum_jax.attention.deconstructed import (
    deconstructed_fixed_qk_attention, deconstructed_fixed_qk_attention_reference,
    deconstructed_mlp_attention, deconstructed_self_gated_attention,
    deconstructed_self_gated_attention_reference, deconstructed_taylor_attention,
    deconstructed_taylor_attention_reference, fixed_k_init, fixed_q_init,
)
from momentum_jax.attention.ema_value import ema_value_attention, ema_value_attention_reference
from momentum_jax.attention.flash_bias import (
    flash_bias_attention, flash_bias_attention_reference, low_rank_bias_factors,
)
from momentum_jax.attention.flex import (
    flex_attention, flex_attention_reference, flex_softmax_attention,
    flex_softmax_attention_reference,
)
from momentum_jax.attention.flex_mods import (
    alibi_score, and_masks, causal_mask, no_mask, segment_mask, sliding_window_mask, softcap_score,
    streaming_llm_mask,
)
from momentum_jax.attention.flow import flow_attention, flow_attention_reference
from momentum_jax.attention.grat import (
    block_local_mask, criss_cross_mask, grat_attention, grat_attention_reference, grat_causal_mask,
    grat_mask, grat_mask_numpy, grat_to_grid, grat_to_groups,
)
from momentum_jax.attention.kv_shift import (
    kv_shift_attention, kv_shift_attention_reference, kv_shift_identity_init,
)
from momentum_jax.attention.learned_params import (
    alibi_decay_init, flash_bias_k_init, flash_bias_q_init, key_columns_at_positions,
    rows_at_positions, zero_agent_bias,
)
from momentum_jax.attention.lightning import lightning_attention, lightning_attention_reference
from momentum_jax.attention.linear import linear_attention, linear_attention_reference
from momentum_jax.attention.mega_ema import (
    mega_ema_attention, mega_ema_attention_reference, mega_ema_delta_init, mega_ema_gamma_init,
)
from momentum_jax.attention.momentum import (
    LEARNED_GAMMA_INIT, check_momentum_params, gain_normalize, learned_gamma_init,
    momentum_attention,
    momentum_attention_reference, momentum_prepare,
)
from momentum_jax.attention.radial import (
    radial_attention, radial_attention_reference, radial_block_mask, radial_mask, radial_mask_numpy,
)
from momentum_jax.attention.registry import (
    AttentionDims, AttentionVariant, Decoding, LearnedLayout, Prepared, available_attention, get_attention,
    register_attention,
)
from momentum_jax.attention.sigmoid import sigmoid_attention, sigmoid_attention_reference
from momentum_jax.attention.sla import (
    sla_attention, sla_attention_reference, sla_block_selection, sla_proj_zero_init,
)
from momentum_jax.attention.softmax import softmax_attention, softmax_attention_reference
from momentum_jax.core.alibi import alibi_slopes
from momentum_jax.core.block_mask import BlockMask, create_block_mask
from momentum_jax.core.rope import apply_rope, rope_frequencies
from momentum_jax.core.shear import momentum_shear, momentum_shear_reference

register_attention(
    "softmax",
    AttentionVariant(softmax_attention, softmax_attention_reference,
                     decoding=Decoding(init_kv_cache, softmax_decode)),
)
_MOMENTUM = register_attention(
    "momentum",
    AttentionVariant(
        functools.partial(momentum_attention, rope=False),
        functools.partial(momentum_attention_reference, rope=False),
        params=("gamma", "boundary", "normalize_gain"),
        prepare=momentum_prepare,
        prepared_hooks={"q": "hook_q_shear", "k": "hook_k_shear"},
        check_params=check_momentum_params,
        decoding=Decoding(init_momentum_cache, momentum_decode),
    ),
)
# The same variant with γ learned per layer and kv head through a softplus (γ >= 0, able to
# approach 0), starting from attention_init["gamma"] or LEARNED_GAMMA_INIT.
register_attention(
    "momentum_learned",
    _MOMENTUM._replace(learned={"gamma": learned_gamma_init},
                       layouts={"gamma": LearnedLayout(nonnegative=True)}),
)
register_attention(
    "kv_shift",
    AttentionVariant(
        kv_shift_attention, kv_shift_attention_reference, params=("alpha", "beta"),
        # KV shifting (arXiv 2411.19574) learns start at the identity: k̃_t = k_t, ṽ_t = v_t.
        learned={"alpha": kv_shift_identity_init, "beta": kv_shift_identity_init},
        decoding=Decoding(init_kv_shift_cache, kv_shift_decode),
    ),
)
# The relaxations of "Deconstructing Attention" (arXiv 2510.11602). The token-wise MLP variant's
# fast form is its reference (one elementwise product), so it is registered as both.
register_attention(
    "deconstructed_mlp",
    AttentionVariant(deconstructed_mlp_attention, deconstructed_mlp_attention),
)
register_attention(
    "deconstructed_taylor",
    AttentionVariant(deconstructed_taylor_attention, deconstructed_taylor_attention_reference,
                     params=("block_size",), masking="causal"),
)
register_attention(
    "deconstructed_self_gated",
    AttentionVariant(deconstructed_self_gated_attention,
                     deconstructed_self_gated_attention_reference, masking="causal"),
)
register_attention(
    "deconstructed_fixed_qk",
    AttentionVariant(
        deconstructed_fixed_qk_attention, deconstructed_fixed_qk_attention_reference,
        params=("fixed_q", "fixed_k"),
        # Learned position-indexed queries / keys ~ N(0, 1), [context_len, N or K, H].
        learned={"fixed_q": fixed_q_init, "fixed_k": fixed_k_init},
    ),
)
register_attention(
    "ema_value",
    AttentionVariant(ema_value_attention, ema_value_attention_reference, params=("eta",),
                     masking="causal", decoding=Decoding(init_ema_cache, ema_value_decode)),
)
register_attention(
    "ema_value_learned",
    AttentionVariant(
        mega_ema_attention, mega_ema_attention_reference, params=("delta", "gamma"),
        # Mega's initialisation (arXiv 2209.10655): δ ~ N(0, 0.2²), γ ~ N(0, 1), 8 components.
        learned={"delta": mega_ema_delta_init, "gamma": mega_ema_gamma_init},
        masking="causal",
    ),
)
register_attention(
    "linear",
    AttentionVariant(linear_attention, linear_attention_reference,
                     params=("feature_map", "eps", "block_size"),
                     decoding=Decoding(init_linear_state, linear_decode)),
)
register_attention(
    "lightning",
    AttentionVariant(
        lightning_attention, lightning_attention_reference, params=("decay", "block_size"),
        # The decay rate stays positive (λ = exp(−decay) in (0, 1)): stored as its logarithm.
        learned={"decay": alibi_decay_init}, layouts={"decay": LearnedLayout(positive=True)},
        masking="causal", decoding=Decoding(init_lightning_state, lightning_decode),
    ),
)
register_attention(
    "sla",
    AttentionVariant(
        sla_attention, sla_attention_reference, params=("proj", "ratio", "block_size"),
        # SLA (arXiv 2509.24006) zero-initialises the linear branch's projection.
        learned={"proj": sla_proj_zero_init},
    ),
)
register_attention(
    "sigmoid",
    AttentionVariant(sigmoid_attention, sigmoid_attention_reference,
                     params=("sigmoid_bias", "normalize", "block_size")),
)
register_attention(
    "flash_bias",
    AttentionVariant(
        flash_bias_attention, flash_bias_attention_reference, params=("q_bias", "k_bias"),
        learned={"q_bias": flash_bias_q_init, "k_bias": flash_bias_k_init},
        layouts={"q_bias": LearnedLayout(at_positions=rows_at_positions),
                 "k_bias": LearnedLayout(at_positions=rows_at_positions)},
    ),
)
register_attention(
    "flow",
    AttentionVariant(flow_attention, flow_attention_reference, params=("eps", "block_size")),
)
register_attention(
    "agent",
    AttentionVariant(
        agent_attention, agent_attention_reference,
        params=("num_agents", "agent_bias", "query_bias"), learned={"agent_bias": zero_agent_bias},
        layouts={"agent_bias": LearnedLayout(at_positions=key_columns_at_positions)},
        masking="bidirectional",
    ),
)
register_attention(
    "affine",
    AttentionVariant(affine_attention, affine_attention_reference,
                     params=("alpha_BxTxN", "alpha_ma"), token_params="affine"),
)
register_attention(
    "flex",
    AttentionVariant(flex_softmax_attention, flex_softmax_attention_reference,
                     params=("block_q", "block_k")),
)
register_attention(
    "radial",
    AttentionVariant(radial_attention, radial_attention_reference,
                     params=("tokens_per_frame", "decay", "block_size")),
)
register_attention(
    "grat",
    AttentionVariant(grat_attention, grat_attention_reference,
                     params=("grid", "group", "pattern", "radius", "block_size")),
)

__all__ = [
    "AttentionDims",
    "AttentionVariant",
    "BlockMask",
    "DecodeContext",
    "Decoding",
    "EmaCache",
    "KVCache",
    "LEARNED_GAMMA_INIT",
    "LearnedLayout",
    "LightningState",
    "LinearState",
    "Prepared",
    "ShiftCache",
    "affine_attention",
    "affine_attention_reference",
    "agent_attention",
    "agent_attention_reference",
    "alibi_decay_init",
    "alibi_score",
    "alibi_slopes",
    "and_masks",
    "apply_rope",
    "available_attention",
    "block_local_mask",
    "cache_bytes",
    "cache_capacity",
    "causal_mask",
    "create_block_mask",
    "criss_cross_mask",
    "deconstructed_fixed_qk_attention",
    "deconstructed_fixed_qk_attention_reference",
    "deconstructed_mlp_attention",
    "deconstructed_self_gated_attention",
    "deconstructed_self_gated_attention_reference",
    "deconstructed_taylor_attention",
    "deconstructed_taylor_attention_reference",
    "ema_value_attention",
    "ema_value_attention_reference",
    "ema_value_decode",
    "fixed_k_init",
    "fixed_q_init",
    "flash_bias_attention",
    "flash_bias_attention_reference",
    "flash_bias_k_init",
    "flash_bias_q_init",
    "flex_attention",
    "flex_attention_reference",
    "flex_softmax_attention",
    "flex_softmax_attention_reference",
    "flow_attention",
    "flow_attention_reference",
    "gain_normalize",
    "get_attention",
    "grat_attention",
    "grat_attention_reference",
    "grat_causal_mask",
    "grat_mask",
    "grat_mask_numpy",
    "grat_to_grid",
    "grat_to_groups",
    "init_ema_cache",
    "init_kv_cache",
    "init_kv_shift_cache",
    "init_lightning_state",
    "init_linear_state",
    "init_momentum_cache",
    "key_columns_at_positions",
    "kv_cache_bytes_per_token",
    "kv_shift_attention",
    "kv_shift_attention_reference",
    "kv_shift_decode",
    "kv_shift_identity_init",
    "learned_gamma_init",
    "lightning_attention",
    "lightning_attention_reference",
    "lightning_decode",
    "linear_attention",
    "linear_attention_reference",
    "linear_decode",
    "low_rank_bias_factors",
    "mega_ema_attention",
    "mega_ema_attention_reference",
    "mega_ema_delta_init",
    "mega_ema_gamma_init",
    "momentum_attention",
    "momentum_attention_reference",
    "momentum_decode",
    "momentum_prepare",
    "momentum_shear",
    "momentum_shear_reference",
    "no_mask",
    "pooling_matrix",
    "radial_attention",
    "radial_attention_reference",
    "radial_block_mask",
    "radial_mask",
    "radial_mask_numpy",
    "register_attention",
    "rope_frequencies",
    "rows_at_positions",
    "segment_mask",
    "sigmoid_attention",
    "sigmoid_attention_reference",
    "sla_attention",
    "sla_attention_reference",
    "sla_block_selection",
    "sla_proj_zero_init",
    "sliding_window_mask",
    "softcap_score",
    "softmax_attention",
    "softmax_attention_reference",
    "softmax_decode",
    "streaming_llm_mask",
    "zero_agent_bias",
]

"""The shared bottom layer of every attention form, pure function and kernel alike.

Trace-time checks (``checks``), sequence masks and segment runs (``masks``), GQA and dtype helpers
(``heads``), RoPE (``rope``), the momentum shear (``shear``), FlexAttention block masks
(``block_mask``), ALiBi slopes (``alibi``) and the sequence chunking of the blocked scans
(``chunks``). It imports no other subpackage; the kernels import only this layer, and
``momentum_jax.attention`` re-exports the momentum shear.
"""

"""Attention analysis: pure functions over attention maps and captured activations.

Head scores, attention sinks, interventions on attention weights, reasoning metrics and spectral
forensics of the momentum shear. Every function takes arrays (``weights_BxNxTxS``, hidden states,
q/k), not models, so it works on attention maps from any source.
"""

"""Attention zoo: every registered causal attention variant, one budget, two recall tasks."""

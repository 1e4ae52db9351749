"""Momentum optimisers as optax ``GradientTransformation``s.

SPAM and Stable-SPAM (spike-aware Adam with momentum reset), adaptive memory momentum (AM-SGD,
AM-AdamW), MKOR (rank-1 K-FAC preconditioning) and momentum (EMA) teachers.
"""

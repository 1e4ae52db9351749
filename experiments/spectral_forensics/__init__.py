"""Spectral forensics of the momentum shear on one-layer induction models (see ``config.py``)."""

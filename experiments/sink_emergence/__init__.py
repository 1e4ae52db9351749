"""Attention sinks with softmax vs sigmoid attention in small LMs (see ``config.py``)."""

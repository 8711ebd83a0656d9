"""Conditional Variational Auto-encoder (Sohn, Lee, Yan, NeurIPS 2015) in plain PyTorch."""

"""SGMN reproducibility and ablation suite for livestreaming product retrieval (LPR)."""

__version__ = "0.1.0"

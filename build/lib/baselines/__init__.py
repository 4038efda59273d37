"""Baseline methods compared against SGMN; one module per method behind a registry."""

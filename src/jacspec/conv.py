"""Convolution layers (work in progress: issue 4)."""

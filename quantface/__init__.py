"""QuantFace Bench: low-bit PTQ of one-step diffusion face restorers, measured honestly."""

__version__ = "0.1.0"

"""QuantFace Bench: low-bit PTQ of one-step diffusion face restorers, measured honestly."""

import logging

__version__ = "0.1.0"

# Banners of libraries imported on the way (the CLI, the Snakefile, the API): bitsandbytes,
# through diffusers, warns that an optional CPU kernel package is absent; mip announces its
# version; `kernels` (through transformers) warns that offline mode skips a publisher check of a
# kernel repository no run downloads. None says anything about a run; their errors still show.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
logging.getLogger("mip").setLevel(logging.WARNING)
logging.getLogger("kernels").setLevel(logging.ERROR)

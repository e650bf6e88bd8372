"""Import diffusers' model code without the optional back-ends no quantface command uses.

diffusers imports bitsandbytes (for its `BitsAndBytesConfig` loader) whenever it is installed,
and transformers (for pipeline-level quantization configs) unconditionally, both on the way to
`diffusers.models.modeling_utils`. pyiqa depends on both, so they are always installed here;
bitsandbytes then compiles ops through torch._inductor and asks the hub for CPU kernels. None of
it is used: quantface loads diffusers models from their config and weights, never through a
bitsandbytes or transformers quantizer. Measured on the 2-core machine, with nothing else
running: `import torch, diffusers.models.unets.unet_2d_condition` 5.8 s, of it 2.3 s for these
two back-ends, paid by every job of the default run.

`import_diffusers_models` hides the two packages while diffusers' model code loads, so diffusers
records them as absent (its optional-import checks fall back as if they were not installed),
then makes them importable again: pyiqa or a user's code can still import transformers or
bitsandbytes later in the same process. Only the CLI calls it (its own processes); the Python
API leaves diffusers as a user's process configures it.
"""

from __future__ import annotations

import sys

UNUSED_BACKENDS = ("bitsandbytes", "transformers")


def import_diffusers_models() -> None:
    """Load `diffusers.models` with UNUSED_BACKENDS hidden; a no-op once diffusers has loaded it
    (then diffusers already holds whatever it found, and nothing is gained by hiding)."""
    if "diffusers.models.modeling_utils" in sys.modules:
        return
    hidden = [name for name in UNUSED_BACKENDS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    try:
        import diffusers.models.modeling_utils  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]

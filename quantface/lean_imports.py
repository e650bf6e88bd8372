"""Import diffusers' model code without the optional back-ends no quantface command uses.

diffusers imports bitsandbytes (for its `BitsAndBytesConfig` loader) whenever it is installed,
transformers (for pipeline-level quantization configs) unconditionally on the way to
`diffusers.models.modeling_utils`, and scipy.stats (for the beta-sigma option of schedulers
quantface never builds) with its schedulers. pyiqa depends on all three, so they are always
installed here; bitsandbytes then compiles ops through torch._inductor and asks the hub for CPU
kernels. None of it is used: quantface loads diffusers models from their config and weights,
never through a bitsandbytes or transformers quantizer, and its DDPM scheduler needs no scipy.
Measured on the 2-core machine, with nothing else running: importing torch and diffusers'
UNet, VAE and DDPM scheduler took 5.8 s, of it 2.3 s for bitsandbytes and transformers and
0.6 s for scipy.stats, paid by every job of the default run.

`import_diffusers_models` hides the three packages while diffusers' model code loads, so
diffusers records them as absent (it decides once, when it loads: its optional-import checks
then fall back as if they were not installed), and makes them importable again: pyiqa or a
user's code can still import transformers, bitsandbytes or scipy later in the same process.
Only the CLI calls it (its own processes); the Python API leaves diffusers as a user's process
configures it.
"""

from __future__ import annotations

import sys

UNUSED_BACKENDS = ("bitsandbytes", "transformers", "scipy")


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

"""The restore path run from the latest intermediate a quantized site cannot change.

`RestorerBundle.restore(lq)` is `decode(denoise(encode(lq), condition(lq)))`. A site in the UNet
cannot change the LQ latent or the embedder's context (the embedder is never quantized), and a
site in the VAE decoder (or `vae.post_quant_conv`) cannot change the restored latent. A method that
measures or captures site after site, with the network upstream of the site fixed, can keep those
intermediates and run only the rest: a decoder site's pass is then a decoder pass instead of a
whole restoration. The kept tensors are what the full pass computes on the way, by the same
operations on the same inputs, so every result is bitwise that of `restore`.

Who keeps the upstream fixed is the caller's business: layer sensitivity measures with every other
quantizer off; Q-Diffusion reconstructs units in execution order, so by the first UNet unit every
encoder unit is final. A bundle that overrides `restore` or `restore_latent` is run whole.
"""

from __future__ import annotations

from torch import Tensor

from quantface.models.base import RestorerBundle

DECODER_SITES = ("vae.decoder.", "vae.post_quant_conv")


def section(site: str) -> str:
    """Where `site` sits on the restore path: "unet", "decoder" or "input" (anything upstream)."""
    if site.startswith("unet."):
        return "unet"
    if site.startswith(DECODER_SITES):
        return "decoder"
    return "input"


def decomposes(model: RestorerBundle) -> bool:
    """Whether `model.restore` is the base class's decode(denoise(encode, condition))."""
    cls = type(model)
    return (
        isinstance(model, RestorerBundle)
        and cls.restore is RestorerBundle.restore
        and cls.restore_latent is RestorerBundle.restore_latent
    )


class StagedRestore:
    """Restores `batches` from the latest intermediate the site given to `run` cannot change.

    The intermediates are computed at their first use, from the network as it is then, and kept.
    """

    def __init__(self, model: RestorerBundle, batches: list[Tensor]) -> None:
        self.model = model
        self.batches = batches
        self.staged = decomposes(model)
        self._latents: list[tuple[Tensor, Tensor]] | None = None
        self._restored: list[Tensor] | None = None

    def latents(self) -> list[tuple[Tensor, Tensor]]:
        """(LQ latent, context) per batch."""
        if self._latents is None:
            m = self.model
            self._latents = [(m.encode(b), m.condition(b)) for b in self.batches]
        return self._latents

    def restored(self) -> list[Tensor]:
        """The restored latent per batch."""
        if self._restored is None:
            self._restored = [self.model.denoise(z, c) for z, c in self.latents()]
        return self._restored

    def run(self, site: str, i: int) -> Tensor:
        """Batch i restored, starting after everything `site` cannot change."""
        m = self.model
        where = section(site) if self.staged else "input"
        if where == "unet":
            z, c = self.latents()[i]
            return m.decode(m.denoise(z, c))
        if where == "decoder":
            return m.decode(self.restored()[i])
        return m.restore(self.batches[i])

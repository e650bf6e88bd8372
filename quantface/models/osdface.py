"""`osdface`: the paper's base model, OSDFace (CVPR 2025), loaded from local files.

Inference as OSDFace's `infer.py` does it, minus its CUDA streams:
  context = VRE(lq)                                   (B, 77, 1024), full precision
  z       = VAE.encode(2 lq - 1) * 0.18215            posterior sample, seeded (see below)
  eps     = UNet(z, t=399, encoder_hidden_states=context)
  x0      = (z - sqrt(1 - a_399) eps) / sqrt(a_399)   SD-2.1 scaled-linear schedule
  out     = (VAE.decode(x0 / 0.18215).clamp(-1, 1) + 1) / 2

Files (README "Paper reproduction assets"):
  - SD-2.1-base in diffusers layout: `<sd21_base>/unet/{config.json, diffusion_pytorch_model
    .safetensors}` and `<sd21_base>/vae/...` (stabilityai/stable-diffusion-2-1-base);
  - OSDFace's release (`pretrained/` of jkwang28/OSDFace, Google Drive link in its README):
    `pytorch_lora_weights.safetensors` (UNet LoRA, rank 16, alpha 16), `associate_2.ckpt` (VRE:
    `state_dict` with `vqvae_LQ.*`), `embedding_change_weights.pth` (the 512->1024 projection).

`from_assets` merges the LoRA into the UNet weights once (W += alpha/r * B A, for Linear and
Conv2d, both `lora_A/lora_B` and `lora.down/lora.up` key styles, as OSDFace's `--merge_lora`),
so the quantization methods see one plain UNet, exactly what the paper quantizes. The bundle's
config holds the UNet/VAE/VRE architecture, so `load_bundle` rebuilds it without the original
files; `prepare_model` therefore converts once into `results/osdface/fp/model.pt`.

Latent sampling: OSDFace samples the VAE posterior with a global seed, so its output depends on
the batch order. Here `latent_sampling: sample` draws each image's noise from a generator seeded
with `sample_seed` (OSDFace's 114): deterministic, independent of batch size and identical for
the FP and every quantized model, so FP-vs-quantized differences are quantization only.
`latent_sampling: mode` uses the posterior mean instead.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor

from quantface.errors import CheckpointError, ConfigError, WeightsMissingError
from quantface.models.base import RestorerBundle
from quantface.models.vre import DEFAULT_VRE, OSDFaceVRE
from quantface.registry import MODELS

log = logging.getLogger(__name__)

SD_URL = "https://huggingface.co/stabilityai/stable-diffusion-2-1-base (diffusers layout)"
OSDFACE_URL = (
    "OSDFace's pretrained/ folder (Google Drive link in the README of "
    "https://github.com/jkwang28/OSDFace)"
)
LORA_FILE = "pytorch_lora_weights.safetensors"
VRE_FILE = "associate_2.ckpt"
EMBED_FILE = "embedding_change_weights.pth"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

DEFAULT_ARCH: dict[str, Any] = {
    "image_size": 512,
    "timestep": 399,
    "latent_scale": 0.18215,
    "latent_sampling": "sample",  # "sample" (OSDFace, seeded per image) | "mode"
    "sample_seed": 114,
    "lora_rank": 16,
    "lora_alpha": 16.0,
    "unet": None,  # diffusers UNet2DConditionModel config (unet/config.json), set by from_assets
    "vae": None,  # diffusers AutoencoderKL config (vae/config.json)
    "vre": {},  # overrides of quantface.models.vre.DEFAULT_VRE
}


def _plain(cfg: dict[str, Any]) -> dict[str, Any]:
    """A diffusers config as plain JSON values (FrozenDict and tuples -> dict and lists)."""
    return json.loads(json.dumps(dict(cfg)))


@MODELS.register("osdface")
class OSDFaceRestorer(RestorerBundle):
    """OSDFace: SD-2.1-base UNet (+ merged LoRA) and VAE with its visual representation embedder, from local files."""

    name = "osdface"
    default_arch = DEFAULT_ARCH  # the keys model.arch may override (checked with the config)
    converted = True  # from local weight files (`check_assets` names the first absent one)

    def __init__(self, config: dict[str, Any] | None = None, modules: dict | None = None) -> None:
        cfg = {**DEFAULT_ARCH, **(config or {})}
        if cfg["unet"] is None or cfg["vae"] is None:
            raise ConfigError(
                "osdface needs its UNet/VAE architecture: build it with "
                "OSDFaceRestorer.from_assets(...) (`quantface prepare-model --model osdface`)"
            )
        if cfg["latent_sampling"] not in ("sample", "mode"):
            raise ConfigError(
                f"model.arch.latent_sampling must be 'sample' or 'mode', not "
                f"'{cfg['latent_sampling']}'"
            )
        cfg["vre"] = {**DEFAULT_VRE, **cfg["vre"]}
        super().__init__(cfg)
        modules = modules or {}
        unet, vae = modules.get("unet"), modules.get("vae")
        self.unet = unet if unet is not None else UNet2DConditionModel.from_config(cfg["unet"])
        self.vae = vae if vae is not None else AutoencoderKL.from_config(cfg["vae"])
        self.embedder = OSDFaceVRE(cfg["vre"])
        ctx = self.unet.config.cross_attention_dim
        if cfg["vre"]["context_dim"] != ctx:
            raise ConfigError(
                f"VRE context_dim {cfg['vre']['context_dim']} != UNet cross_attention_dim {ctx}"
            )

    # --- OSDFace's encode: seeded posterior sample --------------------------------------------
    def encode(self, lq: Tensor) -> Tensor:
        dist = self.vae.encode(lq * 2 - 1).latent_dist
        if self.config["latent_sampling"] == "mode":
            z = dist.mode()
        else:
            shape = dist.mean.shape[1:]
            noise = torch.stack(
                [
                    torch.randn(
                        shape,
                        generator=torch.Generator().manual_seed(int(self.config["sample_seed"])),
                    )
                    for _ in range(lq.shape[0])
                ]
            )
            if torch.onnx.is_in_onnx_export():  # a constant of the graph (the seed fixes it),
                noise = torch.from_numpy(noise.numpy())  # not a random op it cannot export
            z = dist.mean + dist.std * noise.to(dist.mean)
        return z * self.latent_scale

    @staticmethod
    def check_assets(assets: dict[str, Any]) -> None:
        """Every file `from_assets` reads exists (checked when the config is validated)."""
        resolve_assets(assets)

    # --- construction from the released files --------------------------------------------------
    @classmethod
    def from_assets(
        cls, assets: dict[str, Any], arch: dict[str, Any] | None = None
    ) -> OSDFaceRestorer:
        """Build from SD-2.1-base (diffusers layout) + OSDFace's release; merge the LoRA."""
        paths = resolve_assets(assets)
        arch = {**DEFAULT_ARCH, **(arch or {})}
        unet = UNet2DConditionModel.from_pretrained(
            str(paths["sd21_base"]), subfolder="unet", local_files_only=True
        ).float()
        vae = AutoencoderKL.from_pretrained(
            str(paths["sd21_base"]), subfolder="vae", local_files_only=True
        ).float()
        n = merge_lora(unet, paths["lora"], arch["lora_rank"], arch["lora_alpha"])
        log.info("merged %d LoRA pairs from %s into the UNet", n, paths["lora"])
        arch.update(unet=_plain(unet.config), vae=_plain(vae.config))
        arch["vre"] = {
            **arch["vre"],
            "context_dim": int(unet.config.cross_attention_dim),
        }
        bundle = cls(arch, modules={"unet": unet, "vae": vae})
        load_vre(bundle.embedder, paths["vre"], paths["embedding_change"])
        return bundle.eval()


# --- files -----------------------------------------------------------------------------------
def resolve_assets(assets: dict[str, Any]) -> dict[str, Path]:
    """Paths of every file the adapter reads; the first absent one raises a one-line error.

    `assets` keys: `sd21_base` (folder with unet/ and vae/), `osdface` (OSDFace's `pretrained/`
    folder); optional per-file overrides `lora`, `vre`, `embedding_change`.
    """
    sd = assets.get("sd21_base")
    osd = assets.get("osdface")
    if not sd:
        raise WeightsMissingError(f"model.assets.sd21_base is not set: the local copy of {SD_URL}")
    paths = {"sd21_base": Path(sd)}
    for key, fname in (("lora", LORA_FILE), ("vre", VRE_FILE), ("embedding_change", EMBED_FILE)):
        if assets.get(key):
            paths[key] = Path(assets[key])
        elif osd:
            paths[key] = Path(osd) / fname
        else:
            raise WeightsMissingError(
                f"model.assets.osdface is not set: the folder holding {fname} ({OSDFACE_URL})"
            )
    for sub in ("unet", "vae"):
        folder = paths["sd21_base"] / sub
        if not (folder / "config.json").is_file():
            raise WeightsMissingError(f"missing {folder / 'config.json'}: get {SD_URL}")
        if not any((folder / w).is_file() for w in WEIGHT_NAMES):
            raise WeightsMissingError(f"missing {folder / WEIGHT_NAMES[0]}: get {SD_URL}")
    for key in ("lora", "vre", "embedding_change"):
        if not paths[key].is_file():
            raise WeightsMissingError(f"missing {paths[key]}: get it from {OSDFACE_URL}")
    return paths


def _load_torch(path: Path) -> Any:
    """torch.load with weights_only=True: a downloaded checkpoint must not run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot read {path} as a plain tensor checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]})"
        ) from e


def merge_lora(unet: torch.nn.Module, path: Path, rank: int, alpha: float) -> int:
    """W += alpha / rank * B @ A for every LoRA pair (Linear or k x k Conv2d); returns the count.

    Key styles: `unet.<module>.lora_A.weight`/`lora_B` (PEFT) and `<module>.lora.down.weight`/
    `lora.up` (diffusers attention processors). A target the UNet lacks, a rank other than the
    configured one, or an unpaired key is an error: a silently unmerged LoRA would make the
    "FP" model a different model.
    """
    from safetensors.torch import load_file

    lora = load_file(str(path))
    params = dict(unet.named_parameters())
    used: set[str] = set()
    n = 0
    for key in sorted(lora):
        if ".lora_A." in key:
            a_key, b_key = key, key.replace(".lora_A.", ".lora_B.")
            target = key.replace(".lora_A.weight", ".weight")
        elif ".lora.down." in key:
            a_key, b_key = key, key.replace(".lora.down.", ".lora.up.")
            target = key.replace(".lora.down.weight", ".weight")
        else:
            continue
        target = target.removeprefix("unet.")
        if b_key not in lora:
            raise CheckpointError(f"{path}: {a_key} has no partner {b_key}")
        if target not in params:
            raise CheckpointError(f"{path}: LoRA key {a_key} targets {target}, not in the UNet")
        a, b = lora[a_key].float(), lora[b_key].float()
        if a.shape[0] != rank:
            raise CheckpointError(
                f"{path}: {a_key} has rank {a.shape[0]}, model.arch.lora_rank is {rank}"
            )
        w = params[target]
        delta = (b.flatten(1) @ a.flatten(1)).reshape(w.shape)
        with torch.no_grad():
            w.add_(delta * (alpha / rank))
        used.update((a_key, b_key))
        n += 1
    rest = sorted(set(lora) - used)
    if rest:
        raise CheckpointError(f"{path}: {len(rest)} keys are not LoRA pairs, e.g. {rest[0]}")
    if n == 0:
        raise CheckpointError(f"{path} holds no LoRA weights")
    return n


def load_vre(vre: OSDFaceVRE, ckpt: Path, embedding_change: Path) -> None:
    """Load `vqvae_LQ.*` (decoder dropped) and the Conv1d projection, strictly on what is used."""
    payload = _load_torch(ckpt)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{ckpt} holds no state_dict")
    prefix = "vqvae_LQ."
    sub = {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and not k.startswith(prefix + "decoder.")
    }
    if not sub:
        raise CheckpointError(f"{ckpt} has no '{prefix}*' weights (OSDFace's LQ VQ encoder)")
    _load_strict(vre.vqvae, sub, ckpt)
    _load_strict(vre.embedding_change, _load_torch(embedding_change), embedding_change)


def _load_strict(module: torch.nn.Module, state: dict[str, Tensor], path: Path) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise CheckpointError(f"{path} does not fit the VRE architecture: {e}") from e
    if result.missing_keys:
        raise CheckpointError(
            f"{path} lacks {len(result.missing_keys)} weights of the VRE, e.g. "
            f"{result.missing_keys[0]} (does the VRE architecture match model.arch.vre?)"
        )
    if result.unexpected_keys:
        log.warning(
            "%s: %d unused keys ignored, e.g. %s",
            path,
            len(result.unexpected_keys),
            result.unexpected_keys[0],
        )

"""CLIP towers from open_clip: model configs of the suite, and where their weights come from.

The suite's own architectures (`sgmn/models/configs/*.json`, e.g. `lpr-tiny-clip`, the CPU
stand-in for ViT-B/32 on LPR-Synth) are registered with open_clip at import, so every model,
built-in or ours, is made by `open_clip.create_model`. Weights are explicit: `none` (random),
`openai` (open_clip's tag; needs the hub or open_clip's cache), or a local state-dict file that
must match the architecture exactly (open_clip loads it with strict=True).

OpenAI's CLIPs were trained with QuickGELU, which open_clip's `ViT-B-32` config lacks (open_clip
only warns about the mismatch): a tag whose weights need it builds the model with QuickGELU, and
so does a local .safetensors file whose metadata says `sgmn.quick_gelu: true` (the files
`sgmn fetch-weights` writes), so a tag and its fetched file give the same model.
"""
from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

CONFIG_DIR = Path(__file__).parent / "configs"
for _cfg in sorted(CONFIG_DIR.glob("*.json")):
    open_clip.add_model_config(_cfg)

log = logging.getLogger(__name__)


def list_models() -> list[str]:
    return open_clip.list_models()


QUICK_GELU_KEY = "sgmn.quick_gelu"   # .safetensors metadata: the weights need QuickGELU ("true")


def tag_quick_gelu(name: str, tag: str) -> bool:
    """Whether open_clip's weights `tag` of `name` were trained with QuickGELU (OpenAI's are)."""
    return bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a .safetensors state dict ({} for other formats)."""
    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError):
        return {}   # not readable as safetensors: open_clip's load reports it


class PatchEmbedding(torch.nn.Conv2d):
    """A ViT's patch-embedding convolution (stride = kernel, no padding) that runs, under CPU
    bf16 autocast, as one matmul over the flattened patches: oneDNN's bf16 convolution backward
    took a sixth of a ViT-B/32 step, the matmul runs on AMX. The same weight and state-dict key;
    anywhere else (fp32, CUDA) it is the convolution itself, so fp32 results do not change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        n, c, h, w = x.shape
        (kh, kw), out = self.kernel_size, self.out_channels
        gh, gw = h // kh, w // kw                   # a stride-k convolution drops the remainder
        patches = (x[:, :, :gh * kh, :gw * kw].reshape(n, c, gh, kh, gw, kw)
                   .permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * kh * kw))
        y = F.linear(patches, self.weight.reshape(out, -1), self.bias)
        return y.transpose(1, 2).reshape(n, out, gh, gw)


def with_patch_embedding(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its vision tower's patch convolution made a PatchEmbedding (in place)."""
    conv = getattr(getattr(model, "visual", None), "conv1", None)
    if (type(conv) is torch.nn.Conv2d and conv.stride == conv.kernel_size and conv.padding == (0, 0)
            and conv.dilation == (1, 1) and conv.groups == 1):
        conv.__class__ = PatchEmbedding             # no state of its own: weights, hooks, device kept
    return model


def create_clip(name: str, pretrained: str | None = "none", image_size: int | None = None,
                cache_dir: str | None = None) -> torch.nn.Module:
    """Build an open_clip CLIP model and load its weights.

    pretrained: "none" -> random init; "openai" (or any open_clip tag) -> open_clip's weights
    (downloaded into `cache_dir`, default the Hugging Face cache); anything else is a path to a
    local .pt / .bin / .safetensors state dict. The vision tower's patch convolution is a
    PatchEmbedding.
    """
    return with_patch_embedding(_create_clip(name, pretrained, image_size, cache_dir))


def _create_clip(name, pretrained, image_size, cache_dir) -> torch.nn.Module:
    if name not in open_clip.list_models():
        raise ValueError(f"unknown CLIP model '{name}'; known: {', '.join(open_clip.list_models())}")
    if pretrained in (None, "none"):
        return open_clip.create_model(name, pretrained=None, force_image_size=image_size)
    if pretrained in open_clip.list_pretrained_tags_by_model(name):
        try:
            return open_clip.create_model(name, pretrained=pretrained, force_image_size=image_size,
                                          force_quick_gelu=tag_quick_gelu(name, pretrained),
                                          require_pretrained=True, cache_dir=cache_dir)
        except RuntimeError as err:
            raise RuntimeError(
                f"could not load open_clip weights '{name}/{pretrained}' ({err}); on an offline "
                f"machine fetch them once (sgmn fetch-weights, docs/offline.md) and pass the local "
                f"file path as model.pretrained") from err
    path = Path(pretrained).expanduser()
    if not path.is_file():
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise FileNotFoundError(
            f"pretrained weights '{pretrained}' are neither a file nor a tag of {name} (tags: {tags})")
    # open_clip loads a local file with load_state_dict(strict=True): a mismatch lists the keys
    try:
        quick_gelu = weights_metadata(path).get(QUICK_GELU_KEY) == "true"
        return open_clip.create_model(name, pretrained=str(path), force_image_size=image_size,
                                      force_quick_gelu=quick_gelu, require_pretrained=True)
    except (RuntimeError, AssertionError, KeyError, ValueError) as err:
        raise RuntimeError(f"{path}: not a state dict of CLIP '{name}': {err}") from err


def get_tokenizer(name: str):
    return open_clip.get_tokenizer(name)


def save_clip(model: torch.nn.Module, path: str | Path) -> None:
    """Save a state dict that `create_clip(name, pretrained=path)` loads bit-identically."""
    from sgmn.io import atomic_save
    atomic_save(model.state_dict(), path)


def encode_tokens(visual: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(n, 3, H, W) -> the projected CLS embedding (n, D) and, when `visual.output_tokens` is
    set, every token projected into the same space (n, 1 + patches, D), CLS first.

    open_clip returns the patch tokens after ln_post but before the projection, so they are
    projected here (the official SGMN code does the same, modeling.py get_visual_output)."""
    if not visual.output_tokens:
        return visual(x), None
    cls, patches = visual(x)
    if visual.proj is not None:
        patches = patches @ visual.proj
    return cls, torch.cat([cls.unsqueeze(1), patches], 1)

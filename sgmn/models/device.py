"""The torch device a config names ("auto" picks CUDA when there is one), and the precision a
run trains and infers in (`train.precision`: fp32 | bf16 | auto)."""
from __future__ import annotations

import logging
from contextlib import ExitStack, nullcontext

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)

# bf16 autocast pays on a CPU with AMX once the matmuls are wide: ViT-B/32 (width 768) trains
# 2x faster, the tiny default (width 128) 1.6x slower, its small matmuls paying for the casts
# (issue 15's measurements; `sgmn bench --precision fp32 --precision auto` measures both).
BF16_MIN_WIDTH = 512


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available")
    return torch.device(name)


def cpu_capability() -> dict:
    """What the CPU offers matmuls: torch's dispatch level and the bf16 instruction sets."""
    return {"dispatch": torch.backends.cpu.get_cpu_capability(),
            "avx512": bool(torch.cpu._is_avx512_supported()),
            "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
            "amx": bool(torch.cpu._is_amx_tile_supported())}


def model_width(model: nn.Module) -> int:
    """The widest residual stream in the model: its largest LayerNorm (a transformer's width, 768
    for ViT-B; an MLP's hidden layer is wider but does not set the matmuls' smaller side)."""
    return max((m.normalized_shape[-1] for m in model.modules() if isinstance(m, nn.LayerNorm)), default=0)


def resolve_precision(precision: str, device: torch.device, model: nn.Module | None = None) -> tuple[str, str]:
    """(fp32 | bf16, why): `auto` takes bf16 autocast where it is faster, fp32 elsewhere."""
    if precision != "auto":
        return precision, "set in the config"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name(device)} supports bf16"
        return "fp32", f"auto: {torch.cuda.get_device_name(device)} has no bf16"
    if device.type != "cpu":
        return "fp32", f"auto: no bf16 rule for {device.type}"
    if not torch.cpu._is_amx_tile_supported():
        return "fp32", "auto: this CPU has no AMX, where bf16 autocast is slower than fp32"
    width = model_width(model) if model is not None else 0
    if width < BF16_MIN_WIDTH:
        return "fp32", (f"auto: AMX CPU, but the model's width ({width}) is under {BF16_MIN_WIDTH}, "
                        f"where the casts cost more than bf16 saves")
    return "bf16", f"auto: AMX CPU and a model width of {width} (>= {BF16_MIN_WIDTH})"


class _CpuBf16:
    """bf16 autocast on the CPU with attention on SDPA's math kernel; reusable (a training loop
    enters it every step). The CPU flash-attention kernel's bf16 backward took a quarter of a
    ViT-B/32 step (50 tokens, 64-wide heads); the math kernel's batched matmuls run on AMX
    (README, issue 15's measurements)."""

    def __enter__(self):
        self._stack = ExitStack()
        self._stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        self._stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


def autocast(precision: str, device: torch.device):
    """The autocast context of a resolved precision (fp32: none)."""
    if precision != "bf16":
        return nullcontext()
    if device.type == "cpu":
        return _CpuBf16()
    return torch.autocast(device.type, dtype=torch.bfloat16)

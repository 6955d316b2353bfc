"""Where bfloat16 is native: the one hardware question training and local generation both ask."""

from __future__ import annotations


def bf16_is_native() -> bool:
    """True on a CUDA GPU that supports bf16, or on a CPU with AMX tiles (Intel Sapphire Rapids and later).

    There bf16 matmuls run at several times fp32 speed (here: 1.9x for a MiniLM training step, 2x for
    SmolLM2 generation). Elsewhere (AVX2-only CPUs) PyTorch emulates bf16 and it is slower, so callers stay
    in fp32.
    """
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: guarded
    return bool(amx and amx())

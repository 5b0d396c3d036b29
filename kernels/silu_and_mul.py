"""SwiGLU activation of the fused gate_up projection: silu(gate) * up, optionally quantized to
e4m3 in the same launch (the input of an FP8 W8A8 down_proj)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_devices, check_tensor, is_interpreted
from .fp8_quant import _dynamic_scale, _quantize_row, _store_e4m3


@triton.jit
def _silu_mul(x_row, cols, mask, inter):
    """silu(gate) * up of columns ``cols`` of one row, rounded to x's dtype; 0 where masked."""
    gate = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_row + inter + cols, mask=mask, other=0.0)
    # silu is rounded to the input dtype before the product, as torch's F.silu(a) * b.
    act = (gate / (1.0 + tl.exp(-gate))).to(x_row.dtype.element_ty)
    return (act.to(tl.float32) * up.to(tl.float32)).to(x_row.dtype.element_ty)


@triton.jit
def _silu_and_mul_kernel(
    x_ptr, out_ptr,  # x: [T, 2I], out: [T, I]
    stride_x, stride_o, inter,
    BLOCK: tl.constexpr,
):
    # grid: (T, cdiv(I, BLOCK)); program handles BLOCK columns of one row.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    out = _silu_mul(x_ptr + row * stride_x, cols, mask, inter)
    tl.store(out_ptr + row * stride_o + cols, out, mask=mask)


@triton.jit
def _silu_and_mul_fp8_kernel(
    x_ptr, q_ptr, s_ptr, static_ptr,  # x: [T, 2I]; q: [T, I] e4m3 (uint8 if SOFT_CAST); s: [T]
    stride_x, stride_q, inter,
    BLOCK: tl.constexpr, STATIC: tl.constexpr, SOFT_CAST: tl.constexpr, ONE_PASS: tl.constexpr,
):
    # grid (T,): a per-token scale needs the whole row, so one program per row. ONE_PASS
    # (BLOCK >= I): the row stays in registers; else a first pass finds the row's absmax and
    # the second recomputes the (deterministic) products and stores their codes.
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    q_row = q_ptr + row * stride_q
    offs0 = tl.arange(0, BLOCK)
    if ONE_PASS:
        y = _silu_mul(x_row, offs0, offs0 < inter, inter).to(tl.float32)
        _quantize_row(y, q_row + offs0, s_ptr + row, static_ptr, offs0 < inter, STATIC, SOFT_CAST)
    else:
        if STATIC:
            scale = tl.load(static_ptr).to(tl.float32)
        else:
            amax = tl.zeros((BLOCK,), dtype=tl.float32)
            for k0 in range(0, inter, BLOCK):
                offs = k0 + offs0
                y = _silu_mul(x_row, offs, offs < inter, inter).to(tl.float32)
                amax = tl.maximum(amax, tl.abs(y))
            scale = _dynamic_scale(tl.max(amax, axis=0))
        tl.store(s_ptr + row, scale)
        for k0 in range(0, inter, BLOCK):
            offs = k0 + offs0
            y = _silu_mul(x_row, offs, offs < inter, inter).to(tl.float32)
            _store_e4m3(q_row + offs, y, scale, offs < inter, SOFT_CAST)


def _check_input(x: torch.Tensor) -> tuple[int, int]:
    check_tensor("x", x, (None, None))
    t, two_i = x.shape
    check(two_i % 2 == 0, f"x's last dim must be even (gate and up halves), got {two_i}")
    return t, two_i // 2


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [T, 2*I] (gate in the first half, up in the second; unit column stride),
    fp32/fp16/bf16 -> out: [T, I] of x.dtype (optionally preallocated). Returns out."""
    t, inter = _check_input(x)
    if out is None:
        out = torch.empty((t, inter), dtype=x.dtype, device=x.device)
    check_tensor("out", out, (t, inter), (x.dtype,))
    check_devices(_silu_and_mul_kernel, x=x, out=out)
    if t == 0 or inter == 0:
        return out
    block = min(1024, triton.next_power_of_2(inter))
    _silu_and_mul_kernel[(t, triton.cdiv(inter, block))](
        x, out, x.stride(0), out.stride(0), inter,
        BLOCK=block, num_warps=4 if block >= 512 else 1,
    )
    return out


def silu_and_mul_fp8(x: torch.Tensor, static_scale: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`silu_and_mul` quantized to e4m3 in the same launch, bit for bit what
    ``per_token_quant_fp8(silu_and_mul(x), static_scale)`` gives (the product rounded to
    x.dtype first); the 16-bit output is not written.

    x: [T, 2*I] as for :func:`silu_and_mul`; static_scale: None (per-token scales) or one fp32
    value. Returns (q e4m3 [T, I], scale fp32 [T, 1]).
    """
    t, inter = _check_input(x)
    devs = {"x": x}
    if static_scale is not None:
        check(static_scale.numel() == 1 and static_scale.dtype == torch.float32,
              f"static_scale must be one fp32 value, got {tuple(static_scale.shape)} {static_scale.dtype}")
        devs["static_scale"] = static_scale
    check_devices(_silu_and_mul_fp8_kernel, **devs)
    q = torch.empty((t, inter), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((t, 1), dtype=torch.float32, device=x.device)
    if t == 0 or inter == 0:
        return q, scale
    soft = is_interpreted(_silu_and_mul_fp8_kernel)
    # as kernels/fp8_quant.py: rows up to 16384 in one pass (Llama-3.1-8B's 14336), the
    # interpreter in steps of 64 (so the CPU tests run both cases)
    block = min(triton.next_power_of_2(inter), 64 if soft else 16384)
    _silu_and_mul_fp8_kernel[(t,)](
        x, q.view(torch.uint8) if soft else q, scale,
        static_scale if static_scale is not None else scale,
        x.stride(0), q.stride(0), inter,
        BLOCK=block, STATIC=static_scale is not None, SOFT_CAST=soft, ONE_PASS=block >= inter,
        num_warps=1 if soft else max(4, min(16, block // 1024)),
    )
    return q, scale


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Torch reference: [T, 2I] -> [T, I], F.silu(gate) * up in x.dtype."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up

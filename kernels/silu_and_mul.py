"""SwiGLU activation of the fused gate_up projection: silu(gate) * up."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_devices, check_tensor


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
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0)
    # silu is rounded to the input dtype before the product, as torch's F.silu(a) * b.
    act = (gate / (1.0 + tl.exp(-gate))).to(x_ptr.dtype.element_ty)
    out = act.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [T, 2*I] (gate in the first half, up in the second; unit column stride),
    fp32/fp16/bf16 -> out: [T, I] of x.dtype (optionally preallocated). Returns out."""
    check_tensor("x", x, (None, None))
    t, two_i = x.shape
    check(two_i % 2 == 0, f"x's last dim must be even (gate and up halves), got {two_i}")
    inter = two_i // 2
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


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Torch reference: [T, 2I] -> [T, I], F.silu(gate) * up in x.dtype."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up

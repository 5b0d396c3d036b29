"""RMSNorm and the fused residual-add + RMSNorm used between transformer sub-layers.

Rounding follows Hugging Face Llama exactly: the residual sum is rounded to the input
dtype, its mean square is taken in fp32, the normalised row is rounded to the input dtype
and then multiplied by the weight.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_devices, check_tensor


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,  # rows of [T, H]; w: [H]
    stride_x, stride_r, stride_o, stride_ro,
    hidden, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    # One program per row; the whole row [BLOCK] stays in registers.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_ro + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / hidden + eps)
    normed = (xf * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (normed * w).to(out_ptr.dtype.element_ty),
             mask=mask)


def _launch(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
    out: torch.Tensor, residual_out: torch.Tensor | None,
) -> None:
    t, h = x.shape
    if t == 0:
        return
    block = triton.next_power_of_2(h)
    num_warps = 8 if block >= 4096 else (4 if block >= 1024 else 1)
    res = residual if residual is not None else x
    res_out = residual_out if residual_out is not None else out
    _rms_norm_kernel[(t,)](
        x, res, weight, out, res_out,
        x.stride(0), res.stride(0), out.stride(0), res_out.stride(0),
        h, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=num_warps,
    )


def _check_common(x: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    check_tensor("x", x, (None, None))
    check_tensor("weight", weight, (x.shape[1],))
    check(eps > 0.0, f"eps must be > 0, got {eps}")


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """out = rmsnorm(x) * weight.

    x: [T, H] (unit stride in H), fp32/fp16/bf16, or [..., H] (flattened to rows);
    weight: [H] any float dtype; out: optional [T, H] of x.dtype (may be x). Returns out.
    """
    if x.dim() > 2 and out is None:  # e.g. per-head q/k norm: [T, Hq, D]
        return rms_norm(x.reshape(-1, x.shape[-1]), weight, eps).view(x.shape)
    _check_common(x, weight, eps)
    if out is None:
        out = torch.empty_like(x)
    check_tensor("out", out, x.shape, (x.dtype,))
    check_devices(_rms_norm_kernel, x=x, weight=weight, out=out)
    _launch(x, None, weight, eps, out, None)
    return out


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused residual add + RMSNorm (vLLM's ``fused_add_rms_norm``, but returning).

    x, residual: [T, H] of one dtype (unit stride in H); weight: [H].
    Returns (normed, new_residual): new_residual = x + residual, normed =
    rmsnorm(new_residual) * weight. With ``inplace`` they are written into x and residual.
    """
    _check_common(x, weight, eps)
    check_tensor("residual", residual, x.shape, (x.dtype,))
    check_devices(_rms_norm_kernel, x=x, residual=residual, weight=weight)
    out = x if inplace else torch.empty_like(x)
    res_out = residual if inplace else torch.empty_like(residual)
    _launch(x, residual, weight, eps, out, res_out)
    return out, res_out


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Torch reference (Hugging Face LlamaRMSNorm): [T, H] -> [T, H] of x.dtype."""
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (weight.float() * normed.float()).to(x.dtype)


def add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of :func:`add_rms_norm`: returns (normed, x + residual)."""
    new_res = (x.float() + residual.float()).to(x.dtype)
    return rms_norm_ref(new_res, weight, eps), new_res

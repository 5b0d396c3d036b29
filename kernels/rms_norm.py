"""RMSNorm and the fused residual-add + RMSNorm used between transformer sub-layers.

Rounding follows Hugging Face Llama exactly: the residual sum is rounded to the input
dtype, its mean square is taken in fp32, the normalised row is rounded to the input dtype
and then multiplied by the weight.

The FP8 variants (``rms_norm_fp8``, ``add_rms_norm_fp8``: the input of an FP8 W8A8 linear)
quantize that output in the same launch instead of storing it, with fp8_quant.py's formulas:
the constexpr OUT_FP8 is fixed per layer and batch-size range (model/quant/fp8.py
``input_quantizer``), so serving meets no variant the warm-up did not compile. Byte-equal to
the unfused pair on the H200 in bf16; one fp16 case was not (model/quant/fp8.py
``FUSED_DTYPES``: the model fuses bf16 only).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_devices, check_tensor, is_interpreted
from .fp8_quant import _quantize_row


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,  # rows of [T, H]; w: [H]
    q_ptr, s_ptr, static_ptr,  # OUT_FP8: q e4m3 [T, H] (uint8 if SOFT_CAST), s fp32 [T]
    stride_x, stride_r, stride_o, stride_ro, stride_q,
    hidden, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, OUT_FP8: tl.constexpr,
    STATIC: tl.constexpr, SOFT_CAST: tl.constexpr,
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
    y = (normed * w).to(out_ptr.dtype.element_ty)
    if OUT_FP8:
        # the 16-bit output, as the plain variant stores it, quantized per token (or with the
        # static scale) in registers instead of stored: per_token_quant_fp8's numbers
        _quantize_row(y.to(tl.float32), q_ptr + row * stride_q + cols, s_ptr + row, static_ptr,
                      mask, STATIC, SOFT_CAST)
    else:
        tl.store(out_ptr + row * stride_o + cols, y, mask=mask)


def _launch(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
    out: torch.Tensor, residual_out: torch.Tensor | None,
    fp8: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
) -> None:
    """``fp8``: (q, scale, static_scale) -> the FP8 variant, which writes q and scale instead of
    ``out`` (then x, whose dtype it rounds to)."""
    t, h = x.shape
    if t == 0:
        return
    block = triton.next_power_of_2(h)
    num_warps = 8 if block >= 4096 else (4 if block >= 1024 else 1)
    res = residual if residual is not None else x
    res_out = residual_out if residual_out is not None else out
    soft = is_interpreted(_rms_norm_kernel)
    q, s, static = fp8 if fp8 is not None else (out, out, None)
    if soft and fp8 is not None:
        q = q.view(torch.uint8)  # the interpreter's e4m3 cast is wrong: _e4m3_rne_bits
    _rms_norm_kernel[(t,)](
        x, res, weight, out, res_out, q, s, static if static is not None else s,
        x.stride(0), res.stride(0), out.stride(0), res_out.stride(0), q.stride(0),
        h, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=num_warps,
        OUT_FP8=fp8 is not None, STATIC=static is not None, SOFT_CAST=soft,
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


def _fp8_outputs(x: torch.Tensor, static_scale: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if static_scale is not None:
        check(static_scale.numel() == 1 and static_scale.dtype == torch.float32,
              f"static_scale must be one fp32 value, got {tuple(static_scale.shape)} {static_scale.dtype}")
        check_devices(_rms_norm_kernel, x=x, static_scale=static_scale)
    t, h = x.shape
    return (torch.empty((t, h), dtype=torch.float8_e4m3fn, device=x.device),
            torch.empty((t, 1), dtype=torch.float32, device=x.device), static_scale)


def rms_norm_fp8(
    x: torch.Tensor, weight: torch.Tensor, eps: float, static_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rms_norm` with its output quantized to e4m3 in the same launch, bit for bit what
    ``per_token_quant_fp8(rms_norm(x, weight, eps), static_scale)`` gives (the row rounded to
    x.dtype first); the 16-bit output is not written.

    x: [T, H] (unit stride in H); weight: [H]; static_scale: None (per-token scales) or one
    fp32 value. Returns (q e4m3 [T, H], scale fp32 [T, 1]).
    """
    _check_common(x, weight, eps)
    check_devices(_rms_norm_kernel, x=x, weight=weight)
    fp8 = _fp8_outputs(x, static_scale)
    _launch(x, None, weight, eps, x, None, fp8)
    return fp8[0], fp8[1]


def add_rms_norm_fp8(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
    static_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`add_rms_norm` with the normed rows quantized to e4m3 in the same launch (as
    :func:`rms_norm_fp8`). Returns (q e4m3 [T, H], scale fp32 [T, 1], x + residual [T, H])."""
    _check_common(x, weight, eps)
    check_tensor("residual", residual, x.shape, (x.dtype,))
    check_devices(_rms_norm_kernel, x=x, residual=residual, weight=weight)
    fp8 = _fp8_outputs(x, static_scale)
    res_out = torch.empty_like(residual)
    _launch(x, residual, weight, eps, x, res_out, fp8)
    return fp8[0], fp8[1], res_out


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

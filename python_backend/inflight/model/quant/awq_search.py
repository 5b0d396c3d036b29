"""Activation-aware scale search for INT4 weight-only checkpoints (the AWQ algorithm).

Round-to-nearest INT4 spends its 16 levels evenly over every input channel of a group, while a
few input channels carry most of the activation magnitude and so most of the output. AWQ
scales those weight columns up before quantizing (their relative rounding error shrinks) and
divides the matching activations by the same factor, folded into the op that produces them,
so the float model is unchanged:

    y = x @ W.T = (x / s) @ (W * s).T          s[k] > 0 per input channel k

For each group of linears that share an input, ``s = mean|x|^alpha`` (normalized so that
max(s) * min(s) = 1) over a grid of alpha in [0, 1), and the alpha whose quantized output
``(x / s) @ Q(W * s).T`` is closest to the float one on calibration activations wins
(alpha = 0 is plain round-to-nearest, so the chosen scales never do worse on those
activations). The 1 / s goes into:

- q/k/v_proj (input: ``input_layernorm``'s output): the norm's weight;
- gate/up_proj (``post_attention_layernorm``): that norm's weight;
- down_proj (input: silu(gate) * up): the rows of up_proj;
- o_proj (input: attention over v): the rows of v_proj, only when each v channel feeds one
  o_proj input (as many KV heads as query heads); grouped-query models leave o_proj to RTN.

Calibration activations come from one forward of Hugging Face transformers over the
calibration text (the scalings are exact in float, so one pass serves every layer); the
search runs on the GPU when there is one.
Weight clipping (AWQ's second search) is not done.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from inflight import env
from inflight.model.quant.int4 import rtn_int4

log = logging.getLogger(__name__)

GRID = 20  # alphas 0, 0.05, ..., 0.95
_LAYER = re.compile(r"^(.*\.layers\.(\d+))\.")


def fake_int4(w: torch.Tensor, group: int, symmetric: bool = False) -> torch.Tensor:
    """w [N, K] quantized and dequantized (RTN, as the writers quantize)."""
    codes, scales, zeros = rtn_int4(w, group, symmetric)
    n, k = w.shape
    q = (codes.float().reshape(n, k // group, group) - zeros.float()[..., None]) * scales[..., None]
    return q.reshape(n, k)


def search_scales(x: torch.Tensor, weights: list[torch.Tensor], group: int,
                  symmetric: bool = False, grid: int = GRID) -> tuple[torch.Tensor, float, float]:
    """x [T, K] calibration inputs of linears ``weights`` ([N_i, K] each) -> (s [K], the
    output MSE with s, the output MSE of plain RTN)."""
    dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    x = x.to(dev, torch.float32)
    ws = [w.to(dev, torch.float32) for w in weights]
    ref = torch.cat([x @ w.t() for w in ws], dim=1)
    mag = x.abs().mean(0).clamp(min=1e-8)
    best: tuple[float, torch.Tensor] | None = None
    rtn_err = 0.0
    for i in range(grid):
        s = mag.pow(i / grid)
        s = s / (s.max() * s.min()).sqrt()  # max(s) * min(s) = 1: around 1 on a log scale
        out = torch.cat([(x / s) @ fake_int4(w * s, group, symmetric).t() for w in ws], dim=1)
        err = float((out - ref).pow(2).mean())
        if i == 0:
            rtn_err = err
        if best is None or err < best[0]:
            best = (err, s)
    assert best is not None
    return best[1].cpu(), best[0], rtn_err


@dataclass
class SearchReport:
    """Per linear group: the output MSE on the calibration text, with the scales and RTN's."""
    groups: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Mean over groups of (error with scales / RTN's error): < 1 is better than RTN."""
        r = [a / b for _, a, b in self.groups if b > 0]
        return sum(r) / len(r) if r else 1.0


def capture_inputs(model_dir: str, text: str, max_tokens: int = 2048) -> dict[str, torch.Tensor]:
    """Inputs [T, K] of every decoder layer's q_proj, o_proj, gate_proj and down_proj over one
    forward of ``text`` (its first ``max_tokens`` tokens) through transformers, in the
    checkpoint's dtype (an 8B bf16 model needs its 16 GB of host memory), on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").eval()
    got: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def fn(_mod: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            got[name] = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float32, copy=True)
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if n.endswith(("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"))
               and ".layers." in n]
    ids = tok(text, return_tensors="pt")["input_ids"][:, :max_tokens]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return got


def apply_awq_scales(tensors: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor],
                     group: int, symmetric: bool = False, progress: bool = True) -> SearchReport:
    """Search and fold the scales into ``tensors`` (a float state dict, changed in place:
    weights in float32 for the linears that will be quantized, the folded norms and rows
    in their own dtype). ``inputs``: :func:`capture_inputs`."""
    from tqdm.auto import tqdm

    layers = sorted({m.group(1) for n in tensors if (m := _LAYER.match(n))},
                    key=lambda p: int(_LAYER.match(p + ".")[2]))  # type: ignore[index]
    report = SearchReport()

    def fold(name: str, s: torch.Tensor, rows: bool) -> None:
        t = tensors[name]
        scaled = t.float() / (s[:, None] if rows else s)
        tensors[name] = scaled.to(t.dtype) if name.endswith("layernorm.weight") else scaled
        bias = name[: -len("weight")] + "bias"
        if rows and bias in tensors:  # a row's output includes its bias (Qwen2's v_proj)
            tensors[bias] = (tensors[bias].float() / s).to(tensors[bias].dtype)

    def scale_group(prefix: str, x_name: str, linears: list[str], prev: str, rows: bool) -> None:
        names = [f"{prefix}.{lin}.weight" for lin in linears]
        if not all(n in tensors for n in names) or f"{prefix}.{x_name}" not in inputs or prev not in tensors:
            return
        ws = [tensors[n].float() for n in names]
        s, err, rtn = search_scales(inputs[f"{prefix}.{x_name}"], ws, group, symmetric)
        for n, w in zip(names, ws):
            tensors[n] = w * s
        fold(prev, s, rows)
        report.groups.append((f"{prefix}.{'/'.join(linears)}", err, rtn))

    for p in tqdm(layers, desc="AWQ scale search", unit="layer", disable=not progress or env.disable_progress()):
        scale_group(p, "self_attn.q_proj", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                    f"{p}.input_layernorm.weight", rows=False)
        v, o = tensors.get(f"{p}.self_attn.v_proj.weight"), tensors.get(f"{p}.self_attn.o_proj.weight")
        if v is not None and o is not None and v.shape[0] == o.shape[1]:  # one o input per v row
            scale_group(p, "self_attn.o_proj", ["self_attn.o_proj"], f"{p}.self_attn.v_proj.weight", rows=True)
        scale_group(p, "mlp.gate_proj", ["mlp.gate_proj", "mlp.up_proj"],
                    f"{p}.post_attention_layernorm.weight", rows=False)
        scale_group(p, "mlp.down_proj", ["mlp.down_proj"], f"{p}.mlp.up_proj.weight", rows=True)
    log.info("AWQ scale search: %d linear groups, output error %.3f of round-to-nearest's",
             len(report.groups), report.ratio)
    return report

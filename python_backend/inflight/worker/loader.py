"""Weight loading: Hugging Face safetensors (single file or sharded index) or dummy weights.

Checkpoint names map onto the model's parameters through ``STACKED_PARAMS`` (q/k/v -> qkv,
gate/up -> gate_up); every parameter must be filled exactly once or loading fails with the
names that are missing.
"""

from __future__ import annotations

import glob
import json
import os
import zlib
from collections.abc import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from inflight import env
from inflight.config import ModelConfig
from inflight.errors import ConfigError
from inflight.model.llama import STACKED_PARAMS
from inflight.model.quant.base import Parts
from inflight.model.quant.setup import checkpoint_parts, kv_scale_target


def checkpoint_files(model_dir: str) -> list[str]:
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ConfigError(f"{index} is malformed: {e}") from None
        files = sorted({os.path.join(model_dir, v) for v in weight_map.values()})
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise ConfigError(f"{index} names shard(s) that do not exist: {missing}")
        return files
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise ConfigError(
            f"no *.safetensors weights in {model_dir!r} (use load_format='dummy' for random weights)"
        )
    return files


def iter_checkpoint(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) over every shard, with a progress bar over tensors."""
    from safetensors import safe_open

    try:
        handles = [(path, safe_open(path, framework="pt")) for path in files]
    except Exception as e:  # safetensors raises its own error types
        raise ConfigError(f"cannot read checkpoint shard: {e}") from None
    total = sum(len(list(h.keys())) for _, h in handles)
    with tqdm(total=total, desc="Loading weights", unit="tensor", disable=env.disable_progress()) as bar:
        for path, h in handles:
            for name in h.keys():  # noqa: SIM118 - safe_open has no __iter__
                try:
                    t = h.get_tensor(name)
                except Exception as e:  # noqa: BLE001
                    raise ConfigError(f"cannot read tensor {name!r} from {path}: {e}") from None
                bar.update(1)
                yield name, t


def _shard_target(model: nn.Module, name: str) -> tuple[str, str | None]:
    """Checkpoint name -> (model param name, shard id or None)."""
    for fused, parts in STACKED_PARAMS.items():
        for ckpt, shard in parts:
            if f".{ckpt}." in name:
                return name.replace(f".{ckpt}.", f".{fused}."), shard
    return name, None


class _QuantCollector:
    """Gathers each quantized layer's checkpoint tensors (per fused part) and hands them to
    the layer's linear method as soon as the layer is complete."""

    def __init__(self, model: nn.Module, qlayers: dict[str, nn.Module]) -> None:
        self.model, self.qlayers = model, qlayers
        self.pending: dict[str, Parts] = {}
        self.done: set[str] = set()

    def add(self, module: str, shard: str | None, suffix: str, tensor: torch.Tensor, name: str) -> None:
        method = self.qlayers[module].quant
        if suffix not in method.required() + method.optional():
            raise ConfigError(
                f"checkpoint tensor {name!r} does not belong to the {method.name} format; its "
                f"layers take {', '.join(method.required() + method.optional())}")
        if module in self.done:  # an optional tensor after the layer was built (weight_shape)
            return
        parts = self.pending.setdefault(module, {})
        parts.setdefault(shard, {})[suffix] = tensor
        names = checkpoint_parts(self.model, module)
        if all(p in parts and all(r in parts[p] for r in method.required()) for p in names):
            method.load(self.qlayers[module], parts, names)
            self.done.add(module)
            del self.pending[module]

    def check_complete(self, model_dir: str) -> None:
        for module in self.qlayers:
            if module in self.done:
                continue
            method, parts = self.qlayers[module].quant, self.pending.get(module, {})
            lacking = [f"{ckpt}.{r}" for p, ckpt in checkpoint_parts(self.model, module).items()
                       for r in method.required() if r not in parts.get(p, {})]
            raise ConfigError(f"checkpoint in {model_dir!r} lacks {', '.join(lacking[:4])} "
                              f"(the {method.name} format needs {', '.join(method.required())} "
                              "for every quantized layer)")


def _set_kv_scale(model: nn.Module, name: str, attn: str, which: str, tensor: torch.Tensor) -> None:
    try:
        layer = model.get_submodule(attn)
    except AttributeError:
        raise ConfigError(f"checkpoint tensor {name!r} has no place in the model") from None
    if tensor.numel() != 1:
        raise ConfigError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}; KV cache "
                          "scales are one number per layer")
    value = float(tensor.float().reshape(()))
    if not value > 0.0:
        raise ConfigError(f"checkpoint tensor {name!r} is {value}; a KV cache scale must be > 0")
    for part in ("k", "v") if which == "kv" else (which,):
        setattr(layer, f"{part}_scale", value)


def load_weights(model: nn.Module, cfg: ModelConfig, model_dir: str,
                 qlayers: dict[str, nn.Module] | None = None) -> None:
    """Fill the model from the checkpoint. ``qlayers``: the layers a quantized linear method
    owns (model.quant.quantize_model); their tensors go to the method."""
    params = dict(model.named_parameters(remove_duplicate=False))
    filled: dict[str, int] = {}  # param -> elements written
    quant = _QuantCollector(model, qlayers or {})
    for name, tensor in iter_checkpoint(checkpoint_files(model_dir)):
        if "rotary_emb.inv_freq" in name:
            continue
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue
        kv = kv_scale_target(name)
        if kv is not None:
            _set_kv_scale(model, name, *kv, tensor)
            continue
        target, shard = _shard_target(model, name)
        module, _, suffix = target.rpartition(".")
        if module in quant.qlayers and suffix != "bias":
            quant.add(module, shard, suffix, tensor, name)
            continue
        if target not in params:
            raise ConfigError(f"checkpoint tensor {name!r} has no place in {cfg.architecture}")
        param = params[target]
        dst = param.data
        if shard is not None:
            owner = model.get_submodule(target.rsplit(".", 2)[0])
            start, size = owner.shard_offsets()[shard]  # type: ignore[operator]
            dst = dst.narrow(0, start, size)
        tensor, dst = _rank_slice(model.get_submodule(module), shard, suffix, name, tensor, dst)
        if tuple(dst.shape) != tuple(tensor.shape):
            raise ConfigError(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(dst.shape)} from config.json"
            )
        dst.copy_(tensor)
        filled[target] = filled.get(target, 0) + tensor.numel() + getattr(dst, "tp_pad", 0)
    unique = dict(model.named_parameters())
    missing = [n for n, p in unique.items() if filled.get(n, 0) != p.numel()]
    if missing:
        raise ConfigError(f"checkpoint in {model_dir!r} lacks weights for: {missing[:8]}")
    quant.check_complete(model_dir)


def _rank_slice(layer: nn.Module, shard: str | None, suffix: str, name: str, tensor: torch.Tensor,
                dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor parallelism: this rank's slice of a checkpoint tensor (``layer.tp_src``, set by
    model/parallel.py). A vocab-parallel tail shorter than the rank's rows fills the first rows
    of ``dst`` and zeroes the rest (``dst.tp_pad``: the padded elements, for the fill count)."""
    src: dict[str | None, tuple[int, int]] | None = getattr(layer, "tp_src", None)
    if src is None:
        return tensor, dst
    dim = layer.tp_dim if suffix == "weight" else 0  # type: ignore[assignment]
    start, size = src[shard]
    if tensor.dim() <= dim or tensor.shape[dim] < start + size:
        raise ConfigError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}; this "
                          f"tensor-parallel rank needs rows [{start}, {start + size}) of dim {dim}")
    tensor = tensor.narrow(dim, start, size)
    if dim == 0 and size < dst.shape[0]:  # the vocabulary's padded tail
        pad = dst.numel() - tensor.numel()
        dst[size:].zero_()
        dst = dst.narrow(0, 0, size)
        dst.tp_pad = pad  # type: ignore[attr-defined]
    return tensor, dst


_MASK32 = 0xFFFFFFFF
_DUMMY_CHUNK = 1 << 24  # elements hashed at once (bounds the int64 temporaries)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) in int64 arithmetic that never
    overflows: every product is below 2**59."""
    for _ in range(2):
        x = x ^ (x >> 16)
        x = (x * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def dummy_values(key: int, rows: torch.Tensor, cols: torch.Tensor, std: float,
                 dtype: torch.dtype) -> torch.Tensor:
    """[len(rows), len(cols)] values in [-a, a] (a = std * sqrt(3): uniform, standard deviation
    ``std``), each a hash of (key, its global row, its global column) alone: any slice of a
    tensor can be made without the rest, so every tensor-parallel rank makes exactly its part
    of the tensor TP=1 makes."""
    h = _mix32((rows[:, None] * 0x9E3779B1 + cols[None, :] * 0x85EBCA77 + key) & _MASK32)
    h = _mix32(h ^ (key * 0x27D4EB2F & _MASK32))
    return ((h.to(torch.float64) * (2.0 / 2**32) - 1.0) * (std * 3**0.5)).to(dtype)


def _dummy_fill(dst: torch.Tensor, key: int, row0: int, col0: int) -> None:
    """dst [R, C] (or [R]) := dummy_values for global rows row0.., columns col0.., in chunks."""
    view = dst if dst.dim() == 2 else dst[:, None]
    r, c = view.shape
    dev = dst.device
    cols = torch.arange(col0, col0 + c, device=dev, dtype=torch.int64)
    step = max(1, _DUMMY_CHUNK // max(c, 1))
    for i in range(0, r, step):
        n = min(step, r - i)
        rows = torch.arange(row0 + i, row0 + i + n, device=dev, dtype=torch.int64)
        view[i:i + n] = dummy_values(key, rows, cols, 0.02, dst.dtype)


def _name_key(name: str, seed: int) -> int:
    """A stable 32-bit key per (tensor, part, seed): the same in every process and TP size."""
    return zlib.crc32(f"{seed}:{name}".encode())


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Random weights with a sane scale: norms at 1, biases 0, matrices uniform with standard
    deviation 0.02. Each value is a hash of (seed, tensor, part, global row, global column),
    so tensor-parallel ranks hold exactly the slices of the TP=1 model (same tokens at any
    TP size, with the real 8B/70B shapes and no checkpoint); generated on the model's device."""
    named = list(model.named_parameters())
    for name, p in tqdm(named, desc="Dummy weights", unit="tensor", disable=env.disable_progress()):
        module, _, suffix = name.rpartition(".")
        if "norm" in name:
            p.fill_(1.0)
            continue
        if suffix == "bias":
            p.zero_()
            continue
        layer = model.get_submodule(module)
        offsets: dict[str | None, tuple[int, int]] = {None: (0, p.shape[0])}
        if module.rpartition(".")[2] in STACKED_PARAMS:  # fused: its parts, as the loader fills them
            offsets = model.get_submodule(module.rpartition(".")[0]).shard_offsets()  # type: ignore[operator]
        src: dict[str | None, tuple[int, int]] = getattr(layer, "tp_src", None) or {}
        dim = getattr(layer, "tp_dim", 0)
        for part, (at, rows) in offsets.items():
            dst = p.data.narrow(0, at, rows)
            start, size = src.get(part, (0, rows if dim == 0 else p.shape[-1]))
            key = _name_key(f"{name}/{part}", seed)
            if dim == 0:  # column-parallel or vocab-parallel: this rank's rows of the part
                if size < rows:  # the vocabulary's padded tail stays zero
                    dst[size:].zero_()
                    dst = dst.narrow(0, 0, size)
                _dummy_fill(dst, key, start, 0)
            else:  # row-parallel: this rank's columns
                _dummy_fill(dst, key, 0, start)


@torch.no_grad()
def init_dummy_quantized(qlayers: dict[str, nn.Module], seed: int = 0) -> None:
    """Random N(0, 0.02) weights for the quantized layers, through each method's quantizer."""
    for i, layer in enumerate(tqdm(list(qlayers.values()), desc="Dummy quantized weights",
                                   unit="layer", disable=env.disable_progress())):
        dev = layer.quant_device
        gen = torch.Generator(device=dev).manual_seed(seed + 1 + i)
        w = torch.empty(layer.out_features, layer.in_features, device=dev, dtype=layer.quant_dtype)
        layer.quant.from_float(layer, w.normal_(0.0, 0.02, generator=gen))

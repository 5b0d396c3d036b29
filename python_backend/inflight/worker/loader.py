"""Weight loading: Hugging Face safetensors (single file or sharded index) or dummy weights.

Checkpoint names map onto the model's parameters through ``STACKED_PARAMS`` (q/k/v -> qkv,
gate/up -> gate_up); every parameter must be filled exactly once or loading fails with the
names that are missing.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from inflight import env
from inflight.config import ModelConfig
from inflight.errors import ConfigError
from inflight.model.llama import STACKED_PARAMS


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


def load_weights(model: nn.Module, cfg: ModelConfig, model_dir: str) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    filled: dict[str, int] = {}  # param -> elements written
    for name, tensor in iter_checkpoint(checkpoint_files(model_dir)):
        if "rotary_emb.inv_freq" in name:
            continue
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue
        target, shard = _shard_target(model, name)
        if target not in params:
            raise ConfigError(f"checkpoint tensor {name!r} has no place in {cfg.architecture}")
        param = params[target]
        dst = param.data
        if shard is not None:
            owner = model.get_submodule(target.rsplit(".", 2)[0])
            start, size = owner.shard_offsets()[shard]  # type: ignore[operator]
            dst = dst.narrow(0, start, size)
        if tuple(dst.shape) != tuple(tensor.shape):
            raise ConfigError(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(dst.shape)} from config.json"
            )
        dst.copy_(tensor)
        filled[target] = filled.get(target, 0) + tensor.numel()
    unique = dict(model.named_parameters())
    missing = [n for n, p in unique.items() if filled.get(n, 0) != p.numel()]
    if missing:
        raise ConfigError(f"checkpoint in {model_dir!r} lacks weights for: {missing[:8]}")


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Random weights with a sane scale: norms at 1, matrices ~ N(0, 0.02)."""
    named = list(model.named_parameters())
    gen = torch.Generator(device=named[0][1].device).manual_seed(seed)
    for name, p in tqdm(named, desc="Dummy weights", unit="tensor", disable=env.disable_progress()):
        if "norm" in name:
            p.fill_(1.0)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.normal_(0.0, 0.02, generator=gen)  # on the model's device: fast for 8B shapes

"""The same workload through Hugging Face `transformers.generate`, in the same process, so
every report carries a ratio measured side by side. Random weights of the same shapes."""

from __future__ import annotations

import time
from typing import Any

import torch
from tqdm.auto import tqdm

from inflight import env
from inflight.tools.bench.dataset import Workload


def load_hf(model_dir: str, dtype: torch.dtype, device: torch.device) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype)
    return model.eval()


@torch.inference_mode()
def run_hf(model: Any, wl: Workload, batch_size: int, device: torch.device) -> dict[str, Any]:
    """Static batches of `batch_size` (left-padded, fixed new tokens): HF's offline best."""
    order = sorted(range(wl.num_requests), key=lambda i: len(wl.prompts[i]))
    out_tokens = 0
    bar = tqdm(total=wl.num_requests, desc="transformers", unit="req", disable=env.disable_progress())
    t0 = time.perf_counter()
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = max(len(wl.prompts[i]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for r, i in enumerate(idx):
            p = wl.prompts[i]
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        new = max(wl.output_lens[i] for i in idx)
        model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new,
                       min_new_tokens=new, do_sample=False, pad_token_id=0)
        out_tokens += sum(wl.output_lens[i] for i in idx)  # tokens the requests asked for
        bar.update(len(idx))
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    bar.close()
    return {"requests": wl.num_requests, "wall_s": wall, "output_tokens": out_tokens,
            "output_tok_s": out_tokens / wall, "req_s": wl.num_requests / wall,
            "batch_size": batch_size}

"""paged_decode_attention (split-KV) against the fp32 torch reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from inflight.kernels import paged_decode_attention, paged_decode_attention_ref
from kernel_testing import ATTENTION_TOL, assert_close, int32_overflow_errors, make_case

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def run_decode(seq_lens: list[int], group: int, block_size: int, dtype: torch.dtype, d: int,
               device: torch.device, hkv: int = 2, **kw: int | None) -> None:
    c = make_case([1] * len(seq_lens), seq_lens, hkv * group, hkv, d, block_size, dtype, device)
    m = c.meta
    out = paged_decode_attention(c.q, c.k_cache, c.v_cache, m.block_tables, m.seq_lens, 0.3,
                                 max_seq_len=m.max_seq_len, **kw)
    ref = paged_decode_attention_ref(c.q, c.k_cache, c.v_cache, m.block_tables, m.seq_lens, 0.3)
    assert_close(out, ref, ATTENTION_TOL)


# (GQA group, block size, dtype, head dim, splits, BLOCK_N): every group 1..8, block sizes
# 4/16/32, one split (direct write), several (reduce pass, empty splits for short requests),
# a non-power-of-2 split count, and the launcher's own heuristics (None).
CASES = [
    (1, 16, F32, 32, 1, 32),
    (2, 32, F16, 64, 4, 32),
    (4, 16, BF16, 32, 8, 16),
    (8, 4, F32, 16, 3, 16),
    (4, 32, F16, 32, None, None),
    (8, 16, BF16, 64, 2, 64),
    (2, 4, F16, 16, 1, 16),
]


@pytest.mark.parametrize("group,block_size,dtype,d,splits,block_n", CASES)
def test_decode(group: int, block_size: int, dtype: torch.dtype, d: int, splits: int | None,
                block_n: int | None, device: torch.device) -> None:
    run_decode([1, 37, 300], group, block_size, dtype, d, device, num_splits=splits,
               block_n=block_n)


def test_decode_strided_q_out_and_padding_request(device: torch.device) -> None:
    """q/out as views with a row stride; a seq_len-0 padding request yields zeros, not NaN."""
    c = make_case([1, 1], [50, 9], 4, 2, 32, 16, F32, device)
    m = c.meta
    q_big = torch.randn(3, 6, 32, device=device)
    q_big[:2, :4] = c.q
    out_big = torch.full((3, 6, 32), 7.0, device=device)
    lens = torch.cat([m.seq_lens, torch.zeros(1, dtype=torch.int32, device=device)])
    table = torch.cat([m.block_tables, m.block_tables[:1]])
    paged_decode_attention(q_big[:, :4], c.k_cache, c.v_cache, table, lens, 0.5,
                           out=out_big[:, :4], num_splits=2, block_n=16)
    ref = paged_decode_attention_ref(c.q, c.k_cache, c.v_cache, m.block_tables, m.seq_lens, 0.5)
    assert_close(out_big[:2, :4], ref, ATTENTION_TOL)
    assert torch.equal(out_big[2, :4], torch.zeros(4, 32, device=device))
    assert (out_big[:, 4:] == 7.0).all()


def test_decode_many_blocks(device: torch.device) -> None:
    """Large block ids (a cache of many small blocks) resolve through the block table."""
    c = make_case([1, 1], [70, 33], 8, 2, 16, 4, F16, device, num_blocks=300_000)
    m = c.meta
    table = m.block_tables.clone()
    table[0, :3] = torch.tensor([299_999, 150_001, 299_998])
    out = paged_decode_attention(c.q, c.k_cache, c.v_cache, table, m.seq_lens, 0.3,
                                 num_splits=2, block_n=32)
    ref = paged_decode_attention_ref(c.q, c.k_cache, c.v_cache, table, m.seq_lens, 0.3)
    assert_close(out, ref, ATTENTION_TOL)


def test_decode_rejects_bad_inputs(device: torch.device) -> None:
    c = make_case([1], [10], 6, 4, 16, 16, F32, device)
    m = c.meta
    with pytest.raises(ValueError, match="multiple of kv heads"):
        paged_decode_attention(c.q, c.k_cache, c.v_cache, m.block_tables, m.seq_lens, 1.0)
    c = make_case([1], [10], 4, 2, 16, 16, F32, device)
    with pytest.raises(ValueError, match="block_tables dtype"):
        paged_decode_attention(c.q, c.k_cache, c.v_cache, c.meta.block_tables.long(),
                               c.meta.seq_lens, 1.0)
    with pytest.raises(ValueError, match="k_cache dtype"):
        paged_decode_attention(c.q, c.k_cache.half(), c.v_cache.half(), c.meta.block_tables,
                               c.meta.seq_lens, 1.0)


def test_int32_overflow_in_interpreter() -> None:
    """Caches over 2^31 elements (virtual memory), run in a subprocess: without int64
    address arithmetic the kernels read and write wild addresses and the process dies."""
    if torch.cuda.is_available():
        pytest.skip("covered on the GPU by test_int32_overflow_gpu")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = ("import json, kernel_testing as t; "
            "print(json.dumps(t.int32_overflow_errors('cpu')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    if errors is None:
        pytest.skip("could not allocate 2 x 4 GiB of virtual memory")
    assert errors["write"] == 0.0
    assert errors["prefill"] < 2e-3 and errors["decode"] < 2e-3, errors


@pytest.mark.gpu
def test_int32_overflow_gpu() -> None:
    errors = int32_overflow_errors("cuda", hkv=8, d=128)
    assert errors is not None
    assert errors["write"] == 0.0
    assert errors["prefill"] < 2e-3 and errors["decode"] < 2e-3, errors


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_decode_gpu(dtype: torch.dtype, d: int, group: int) -> None:
    """Realistic shapes: 8 kv heads, contexts up to 32k, heuristic splits and tiles."""
    dev = torch.device("cuda")
    run_decode([32768, 1, 4097, 100], group, 16, dtype, d, dev, hkv=8)
    run_decode([513] * 64, group, 16, dtype, d, dev, hkv=8)
    run_decode([20000], group, 32, dtype, d, dev, hkv=8)

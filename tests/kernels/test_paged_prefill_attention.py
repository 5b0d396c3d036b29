"""paged_prefill_attention (varlen, causal, cached prefix) against the fp32 torch reference."""

from __future__ import annotations

import pytest
import torch
from inflight.kernels import attention_ref, paged_prefill_attention
from kernel_testing import ATTENTION_TOL, assert_close, make_case

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# (new tokens, context after the step): a cached prefix, a fresh prompt, one token with a
# prefix (the tail of a chunked prefill), a chunk spanning several query and key tiles.
REQS = [(5, 15), (40, 40), (1, 37), (23, 90)]


def run_prefill(reqs: list[tuple[int, int]], group: int, block_size: int, dtype: torch.dtype,
                d: int, device: torch.device, hkv: int = 2, **kw: int | None) -> None:
    lq, lens = [r[0] for r in reqs], [r[1] for r in reqs]
    c = make_case(lq, lens, hkv * group, hkv, d, block_size, dtype, device, num_decodes=0)
    m = c.meta
    out = paged_prefill_attention(c.q, c.k_cache, c.v_cache, m.query_start_loc, m.seq_lens,
                                  m.block_tables, 0.2, m.max_query_len, **kw)
    ref = attention_ref(c.q, c.k_cache, c.v_cache, m.query_start_loc, m.seq_lens,
                        m.block_tables, 0.2)
    assert_close(out, ref, ATTENTION_TOL)


# (GQA group, block size, dtype, head dim, BLOCK_M rows = tokens * group, BLOCK_N)
CASES = [
    (1, 16, F32, 32, 16, 16),
    (2, 32, F16, 16, 32, 16),
    (4, 16, BF16, 32, 32, 32),
    (8, 4, F32, 16, 16, 16),
    (4, 32, F16, 64, None, None),
]


@pytest.mark.parametrize("group,block_size,dtype,d,block_m,block_n", CASES)
def test_prefill(group: int, block_size: int, dtype: torch.dtype, d: int, block_m: int | None,
                 block_n: int | None, device: torch.device) -> None:
    run_prefill(REQS, group, block_size, dtype, d, device, block_m=block_m, block_n=block_n)


def test_prefill_group_not_power_of_two(device: torch.device) -> None:
    run_prefill([(9, 20), (4, 4)], 3, 16, F32, 16, device, hkv=1, block_m=16, block_n=16)


def test_prefill_row_offset_leaves_other_rows(device: torch.device) -> None:
    """query_start_loc starting past row 0 (decode rows first): only request rows written."""
    c = make_case([1, 1, 12, 7], [5, 9, 30, 7], 4, 2, 32, 16, F16, device)
    m = c.meta
    out = torch.full_like(c.q, 3.0)
    paged_prefill_attention(c.q, c.k_cache, c.v_cache, m.query_start_loc[2:], m.seq_lens[2:],
                            m.block_tables[2:], 0.2, 12, out=out, block_m=16, block_n=16)
    ref = attention_ref(c.q, c.k_cache, c.v_cache, m.query_start_loc[2:], m.seq_lens[2:],
                        m.block_tables[2:], 0.2)
    assert_close(out[2:], ref[2:], ATTENTION_TOL)
    assert (out[:2] == 3.0).all()


def test_prefill_rejects_bad_inputs(device: torch.device) -> None:
    c = make_case([4], [10], 4, 2, 16, 16, F32, device)
    m = c.meta
    with pytest.raises(ValueError, match="query_start_loc dtype"):
        paged_prefill_attention(c.q, c.k_cache, c.v_cache, m.query_start_loc.long(),
                                m.seq_lens, m.block_tables, 1.0, 4)
    with pytest.raises(ValueError, match="seq_lens dim 0 must be 1"):
        paged_prefill_attention(c.q, c.k_cache, c.v_cache, m.query_start_loc,
                                m.seq_lens.repeat(2), m.block_tables, 1.0, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_prefill_gpu(dtype: torch.dtype, d: int, group: int) -> None:
    """Realistic shapes: 8 kv heads, chunked prefill over long cached prefixes."""
    dev = torch.device("cuda")
    reqs = [(2048, 2048), (512, 32768), (1, 5000), (777, 1000), (100, 8192)]
    run_prefill(reqs, group, 16, dtype, d, dev, hkv=8)
    run_prefill([(4096, 4096)], group, 32, dtype, d, dev, hkv=8)

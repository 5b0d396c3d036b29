"""Loads the model, owns the KV cache tensor, turns a StepPlan into device inputs and logits.

Flat layout of a step: the new tokens of every scheduled request concatenated (decodes
first), with positions, cache slots and per-request block tables.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from inflight.config import EngineConfig, ModelConfig
from inflight.engine.step_plan import StepPlan
from inflight.errors import ConfigError
from inflight.model import model_class
from inflight.model.attention import AttentionMetadata, get_attention_backend
from inflight.model.parallel import SINGLE, ShardShape
from inflight.model.quant import QuantSpec, check_device, quantize_model, resolve
from inflight.worker.cuda_graphs import MIXED_GRAPH_MAX_REQS, DecodeGraphs, MixedGraphs
from inflight.worker.loader import init_dummy_quantized, init_dummy_weights, load_weights

if TYPE_CHECKING:
    from inflight.worker.ranks import RankGroup, RankWorker

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CPU_KV_BYTES_FRACTION = 0.1  # default CPU KV pool: 10% of RAM, capped below


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def resolve_dtype(name: str, model_cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cpu":
        return torch.float32  # CPU half-precision matmuls are slow and less exact
    return _DTYPES.get(model_cfg.torch_dtype, torch.bfloat16)


@dataclass
class StepInputs:
    """Runner-internal: the flat tensors of one step."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [N] rows of hidden states to turn into logits
    num_logits: int  # len(logits_indices)
    plan: StepPlan | None = None  # tensor parallel: what rank 0 sends the other ranks
    patched: bool = False  # input_ids changed on the device (patch_input_ids)


class ModelRunner:
    def __init__(self, cfg: EngineConfig, model_cfg: ModelConfig, max_seq_len: int,
                 ranks: RankGroup | RankWorker | None = None) -> None:
        """``ranks``: tensor parallelism (worker/ranks.py): rank 0's group, which this runner
        drives, or a worker's link; None: one device."""
        self.cfg = cfg
        self.model_cfg = model_cfg
        self.ranks = ranks
        self.tp = ranks.tp if ranks is not None else SINGLE
        self.shard = ShardShape.of(model_cfg, self.tp)
        self.device = ranks.device if ranks is not None else resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, model_cfg, self.device)
        self.max_seq_len = max_seq_len
        self.block_size = cfg.block_size
        self.max_blocks_per_seq = -(-max_seq_len // cfg.block_size)
        self.quant: QuantSpec | None = resolve(cfg.quantization, cfg.model, cfg.load_format)
        kv_fp8 = cfg.kv_cache_dtype == "fp8" or (
            cfg.kv_cache_dtype == "auto" and self.quant is not None and self.quant.kv_cache_fp8)
        self.kv_dtype = torch.float8_e4m3fn if kv_fp8 else self.dtype
        check_device(self.quant, kv_fp8, self.device.type,
                     torch.cuda.get_device_capability(self.device) if self.device.type == "cuda" else None)
        self.model = self._load_model()
        if ranks is not None and self.device.type == "cuda" and ranks.all_reduce == "symm":
            # every rank here, in the same order: a collective. Decode-sized tensors (up to the
            # largest CUDA-graph batch) take the one-shot path; larger ones NCCL.
            self.tp.enable_small_all_reduce(self.dtype, min(cfg.max_batch_size, 256) * model_cfg.hidden_size)
        self.backend = get_attention_backend(cfg.attention_backend, self.device.type)
        self.num_blocks = self._num_kv_blocks()
        c = model_cfg
        # kv_cache: [L, 2, num_blocks, block_size, Hkv, D] (Hkv: this rank's KV heads)
        self.kv_cache = torch.zeros(
            c.num_layers, 2, self.num_blocks, cfg.block_size, self.shard.num_kv_heads, c.head_dim,
            dtype=self.kv_dtype, device=self.device,
        )
        self.graphs: DecodeGraphs | None = None
        if self.device.type == "cuda" and not cfg.enforce_eager and self.backend.name == "triton":
            self.graphs = DecodeGraphs(self.model, self.kv_cache, self.backend,
                                       min(cfg.max_batch_size, 256), self.max_blocks_per_seq,
                                       max_seq_len, c.vocab_size, self.device)
            self.graphs.capture()
        self.mixed_graphs: MixedGraphs | None = None
        if self.graphs is not None and cfg.cuda_graph_max_tokens:
            self.mixed_graphs = MixedGraphs(
                self.model, self.kv_cache, self.backend,
                min(cfg.cuda_graph_max_tokens, cfg.max_num_tokens),
                min(cfg.max_batch_size, MIXED_GRAPH_MAX_REQS), self.max_blocks_per_seq,
                max_seq_len, c.vocab_size, self.device)
            self.mixed_graphs.capture()
        if ranks is not None:
            ranks.wait_ready()

    def _load_model(self) -> torch.nn.Module:
        cls = model_class(self.model_cfg)
        torch.manual_seed(self.cfg.seed)
        with torch.device(self.device):
            model = (cls(self.model_cfg, self.max_seq_len) if self.tp.size == 1 else
                     cls(self.model_cfg, self.max_seq_len, self.tp)).to(self.dtype)
        qlayers = ({} if self.quant is None else
                   quantize_model(model, self.quant, self.device, self.dtype))
        if self.cfg.load_format == "dummy":
            init_dummy_weights(model, self.cfg.seed)
            init_dummy_quantized(qlayers, self.cfg.seed)
        else:
            load_weights(model, self.model_cfg, self.cfg.model, qlayers)
        if self.kv_dtype != torch.float8_e4m3fn:  # checkpoint KV scales only mean something in FP8
            for mod in model.modules():
                if hasattr(mod, "k_scale"):
                    mod.k_scale = mod.v_scale = 1.0
        model.eval().requires_grad_(False)
        if self.quant is not None:
            log.info("quantization: %s %s (%s), %d linear layers", self.quant.checkpoint_format,
                     self.quant.kind, self.quant.source, len(qlayers))
            if self.device.type == "cuda":  # the float weights dropped: give their memory back
                torch.cuda.empty_cache()
        return model

    def kv_bytes_per_token(self) -> int:
        c = self.model_cfg
        return 2 * c.num_layers * self.shard.num_kv_heads * c.head_dim * torch.finfo(self.kv_dtype).bits // 8

    def workspace_bytes(self) -> int:
        """GPU memory kept out of the KV pool: one step's activations at max_num_tokens,
        fp32 logits of a full batch, the dense copy of the largest INT4 layer (its GEMMs
        above 4 rows dequantize first: model/quant/int4.py), and 1 GiB for CUDA graphs and
        the allocator."""
        c = self.model_cfg
        s, d = self.shard, c.head_dim
        width = 4 * c.hidden_size + 3 * s.intermediate + (s.num_heads + 2 * s.num_kv_heads) * d
        itemsize = torch.finfo(self.dtype).bits // 8
        act = self.cfg.max_num_tokens * width * itemsize
        logits = 3 * self.cfg.max_batch_size * c.vocab_size * 4
        dense = 0
        if self.quant is not None and self.quant.kind == "int4":
            dense = 2 * s.intermediate * c.hidden_size * itemsize  # gate_up, the largest
        return act + logits + dense + (1 << 30)

    def _num_kv_blocks(self) -> int:
        per_token = self.kv_bytes_per_token()
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            free -= self.workspace_bytes()  # activations, logits, CUDA graphs
            tokens = int(free * self.cfg.kv_cache_free_gpu_mem_fraction) // per_token
        else:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            tokens = min(int(ram * _CPU_KV_BYTES_FRACTION) // per_token, 1 << 17)
        if self.cfg.max_tokens_in_paged_kv_cache is not None:
            tokens = min(tokens, self.cfg.max_tokens_in_paged_kv_cache)
        blocks = tokens // self.block_size
        if self.ranks is not None:  # one pool size for every rank: the smallest
            blocks = self.ranks.agree_blocks(blocks)
        if blocks < 1:
            raise ConfigError(
                f"no room for a single KV block ({per_token * self.block_size} bytes); "
                "raise kv_cache_free_gpu_mem_fraction or max_tokens_in_paged_kv_cache"
            )
        log.info("KV cache: %d blocks of %d tokens = %d tokens, %s (%.2f GiB)", blocks,
                 self.block_size, blocks * self.block_size, str(self.kv_dtype).removeprefix("torch."),
                 blocks * self.block_size * per_token / 2**30)
        return blocks

    # ---- per step --------------------------------------------------------------------------
    def prepare(self, plan: StepPlan) -> StepInputs:
        """The plan's flat arrays on the device. A live plan views host buffers the scheduler
        reuses every step (pinned on CUDA): CPU copies them, CUDA copies asynchronously and
        records an event the scheduler waits on before it writes the next step."""
        dev = self.device
        bufs = plan.buffers
        if dev.type == "cuda" and bufs is not None:
            t = bufs.tensors

            def put(name: str, n: int) -> torch.Tensor:
                return t[name][:n].to(dev, non_blocking=True)
        else:
            a = plan.arrays

            def put(name: str, n: int) -> torch.Tensor:
                x = torch.from_numpy(a[name].reshape(-1)[:n].copy())
                return x.to(dev) if dev.type != "cpu" else x

        n_tok, n_req, width = plan.num_tokens, plan.num_reqs, plan.table_width
        qsl = plan.query_start_loc.tolist()
        meta = AttentionMetadata(
            slot_mapping=put("slot_mapping", n_tok),  # [T] int64
            query_start_loc=put("query_start_loc", n_req + 1),  # [B+1] int32
            seq_lens=put("seq_lens", n_req),  # [B] int32
            block_tables=put("block_tables", n_req * width).view(n_req, width),  # [B, W] int32
            num_decodes=plan.num_decodes,
            max_query_len=plan.max_query_len,
            max_seq_len=plan.max_seq_len,
            query_start_loc_cpu=qsl,
            seq_lens_cpu=plan.seq_lens.tolist(),
        )
        inp = StepInputs(
            input_ids=put("input_ids", n_tok),  # [T] int64
            positions=put("positions", n_tok),  # [T] int64
            meta=meta,
            logits_indices=put("logits_indices", plan.num_logits),  # [N] int64
            num_logits=plan.num_logits,
            plan=plan,
        )
        if bufs is not None:
            bufs.record_copies(dev)
        return inp

    @torch.inference_mode()
    def patch_input_ids(self, inp: StepInputs, rows: list[int], tokens: torch.Tensor,
                        src: list[int]) -> None:
        """input_ids[rows] = tokens[src]: tokens sampled by the previous step, still on the
        device (overlapped scheduling). No host sync: the indices travel through pinned memory."""
        n = len(rows)
        inp.patched = True
        if rows == src == list(range(n)):  # steady decode: same requests in the same order
            inp.input_ids[:n].copy_(tokens[:n])
            return
        idx = torch.tensor([rows, src], dtype=torch.long)
        if self.device.type == "cuda":
            idx = idx.pin_memory().to(self.device, non_blocking=True)
        inp.input_ids[idx[0]] = tokens[idx[1]]

    @torch.inference_mode()
    def execute(self, inp: StepInputs) -> torch.Tensor:
        """Runs the model; returns fp32 logits [N, V] for inp.logits_indices."""
        meta = inp.meta
        g = self.graphs
        ranks = self.ranks
        if ranks is not None and ranks.driver:  # rank 0: the other ranks run this step too
            assert inp.plan is not None
            ranks.send_step(inp.plan.to_bytes(), inp.input_ids if inp.patched else None)  # type: ignore[union-attr]
        if (g is not None and meta.num_decodes == meta.num_reqs
                and g.padded_size(meta.num_reqs) is not None):
            logits = g.run(inp.input_ids, inp.positions, meta)  # lm_head inside the graph
            if inp.num_logits == meta.num_reqs:  # every decode samples: rows in order
                return logits
            return logits[inp.logits_indices]
        mg = self.mixed_graphs
        if mg is not None and mg.fits(meta, inp.num_logits):  # prefill tokens, few requests
            return mg.run(inp.input_ids, inp.positions, meta, inp.logits_indices)
        self.backend.plan(meta)
        hidden = self.model(inp.input_ids, inp.positions, self.kv_cache, self.backend, meta)
        return self.model.compute_logits(hidden[inp.logits_indices])  # type: ignore[operator]

"""KV bytes per token of the DeepSeek layouts at their real shapes, as the memory plan sees
them (the plan derives its per-token figure from the page layout `kv_layout_for` builds)."""

from __future__ import annotations

import torch

from runtime.config import ModelConfig
from runtime.local_model import kv_layout_for
from runtime.memory_plan import DeviceMemory, MemoryBudget, plan_memory

GB = 10**9
V3 = {"architectures": ["DeepseekV3ForCausalLM"], "vocab_size": 129280, "hidden_size": 7168,
      "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
      "num_attention_heads": 128, "num_key_value_heads": 128, "kv_lora_rank": 512,
      "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
      "n_routed_experts": 256, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
      "first_k_dense_replace": 3, "n_shared_experts": 1,
      "routed_scaling_factor": 2.5}  # fmt: skip
CSA, HCA = "compressed_sparse_attention", "heavily_compressed_attention"
V4_FLASH = {"architectures": ["DeepseekV4ForCausalLM"], "vocab_size": 129280,
            "hidden_size": 4096, "moe_intermediate_size": 2048, "num_hidden_layers": 43,
            "num_attention_heads": 64, "num_key_value_heads": 1, "head_dim": 512,
            "q_lora_rank": 1024, "num_experts_per_tok": 6, "n_routed_experts": 256,
            "layer_types": [HCA, HCA] + [CSA, HCA] * 20 + [CSA], "sliding_window": 128,
            "o_groups": 8, "o_lora_rank": 1024, "index_n_heads": 64, "index_head_dim": 128,
            "index_topk": 512, "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6,
            "partial_rotary_factor": 0.125}  # fmt: skip


def per_token(raw: dict) -> int:
    layout = kv_layout_for(ModelConfig.from_hf(raw), torch.bfloat16, 256)
    plan = plan_memory(8192, 256, layout.page_bytes, DeviceMemory("cpu", 0, 0, 0, 0),
                       MemoryBudget(), host_available=GB, disk_bytes=GB)
    assert plan.kv_bytes_per_token == layout.bytes_per_token
    return plan.kv_bytes_per_token


def test_mla_keeps_one_576_wide_latent_per_token_and_layer():
    assert per_token(V3) == 61 * (512 + 64) * 2  # 70,272 bytes: 68.6 GiB per 1M tokens


def test_v4_rows_are_the_widest_layer_of_every_kind_kept():
    # a CSA row: window key 512, compressor inputs 4 x 512, entry 512, indexer 5 x 128
    assert per_token(V4_FLASH) == 43 * (6 * 512 + 5 * 128) * 2  # 319,232 bytes a token

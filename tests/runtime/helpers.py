"""Model-test helpers: a minimal paged runner (chunked prefill, greedy decode) and HF references.

Not the engine (runtime/engine/ is): just enough paging to drive `CausalLM.forward` through
`build_metadata`, `ForwardContext` and the torch reference backend over a `DevicePagePool`.
"""

from __future__ import annotations

import torch
from torch import nn

from memory.device_pool import DevicePagePool
from memory.kv_layout import KVLayout
from runtime.config import ModelConfig
from runtime.engine.metadata import build_metadata
from runtime.forward_context import ForwardContext
from runtime.kernels.layer_ops import TorchOps
from runtime.kernels.torch_ref import TorchReferenceBackend


class PagedRunner:
    """One sequence over a pool of `page_size`-token pages; its block table grows as it goes."""

    def __init__(
        self,
        model: nn.Module,
        cfg: ModelConfig,
        page_size: int = 16,
        num_pages: int = 64,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ):
        planes, heads, dim = cfg.kv_row()
        layout = KVLayout(cfg.num_layers, heads, dim, page_size, dtype, planes)
        self.model = model
        self.device = torch.device(device)
        self.pool = DevicePagePool(layout, num_pages, self.device)
        self.backend = TorchReferenceBackend()
        self.ops = TorchOps()
        self.page_size = page_size
        self.pages: list[int] = []
        self.tokens: list[int] = []
        # Hybrid models keep their linear layers' states in a slot beside the pages.
        self.states = model.new_state_pool(1) if hasattr(model, "new_state_pool") else None
        self.slot = self.states.alloc() if self.states is not None else -1

    @torch.inference_mode()
    def extend(self, ids: list[int]) -> torch.Tensor:
        """Append `ids` in one forward; logits `(len(ids), vocab)` float32 of the new positions."""
        start, end = len(self.tokens), len(self.tokens) + len(ids)
        need = -(-end // self.page_size) - len(self.pages)
        if need > 0:
            self.pages += self.pool.alloc(need)
        meta = build_metadata([self.pages], [end], [len(ids)], self.page_size, self.device)
        states = None if self.states is None else self.states.bind([self.slot], meta)
        ctx = ForwardContext(self.backend, self.pool.layer_views(), meta, self.ops, states)
        hidden = self.model(torch.tensor(ids, device=self.device),
                            torch.arange(start, end, device=self.device), ctx)
        self.tokens += ids
        return self.model.compute_logits(hidden).cpu()

    def prefill(self, ids: list[int], chunks: list[int]) -> torch.Tensor:
        """Extend by `ids` cut into chunks of the given sizes (the last one takes the rest)."""
        logits, pos = [], 0
        for size in [*chunks, len(ids)]:
            if pos >= len(ids):
                break
            logits.append(self.extend(ids[pos : pos + size]))
            pos += size
        return torch.cat(logits)

    def greedy(self, prompt: list[int], n: int, chunks: list[int] = ()) -> list[int]:
        """Prefill `prompt`, then decode `n` tokens by argmax, one forward per token."""
        last = self.prefill(prompt, list(chunks))[-1]
        out: list[int] = []
        for _ in range(n):
            out.append(int(last.argmax()))
            last = self.extend(out[-1:])[-1]
        return out


def tiny_hf_model(cls_name: str, rope: dict, gqa: int, tied: bool, extra: dict):
    """A random 2-layer transformers model, weights large enough that greedy steps are no ties."""
    import transformers  # only the model tests need it

    heads = 8
    config = getattr(transformers, cls_name)(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads // gqa,
        head_dim=16,  # != hidden / heads: the explicit head_dim must be honoured
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        rope_parameters={**rope, "rope_theta": 10000.0},
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **extra,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.2)
    return model.eval()


def prompt_ids(vocab: int, n: int, seed: int = 1) -> list[int]:
    """`n` reproducible random token ids below `vocab`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    """transformers' float32 logits `(len(ids), vocab)` for one unbatched prompt."""
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float()


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    """The tokens `generate(do_sample=False)` appends to `ids` (at most `n`, no eos stop).

    The pad id is one the prompt lacks: generate masks every prompt token equal to it."""
    used = set(ids)
    pad = next(t for t in range(hf.config.vocab_size) if t not in used)
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=pad,
        )
    return out[0, len(ids) :].tolist()


def check_prefill(hf, loaded, prompt_len: int, chunks: list[int], page_size: int = 16) -> None:
    """Chunked prefill of a random prompt: logits at every position close to transformers'."""
    ids = prompt_ids(loaded.config.vocab_size, prompt_len)
    ours = PagedRunner(loaded.model, loaded.config, page_size=page_size).prefill(ids, chunks)
    assert_close_logits(ours, hf_logits(hf, ids))


def check_greedy(hf, loaded, prompt_len: int, new_tokens: int, chunks: list[int]) -> None:
    """Greedy decoding after a chunked prefill: the very tokens transformers generates."""
    ids = prompt_ids(loaded.config.vocab_size, prompt_len, seed=2)
    ours = PagedRunner(loaded.model, loaded.config, page_size=16).greedy(ids, new_tokens, chunks)
    assert ours == hf_greedy(hf, ids, new_tokens)


def assert_close_logits(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    """max |ours - ref| within `rel` times the largest |logit| of the reference."""
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert err <= rel * scale, f"max |diff| {err:.3g} over logit scale {scale:.3g}"


def check_bf16(hf, loaded, prompt_len: int = 40) -> None:
    """The bf16 path runs (fp32-kept parameters beside bf16 ones) and is about as close to fp32
    transformers as transformers itself in bf16 (mean error: tiny random models flip a routing
    choice here and there in bf16, which makes the largest error noise)."""
    import copy

    from runtime.loader import load_model

    ids = prompt_ids(loaded.config.vocab_size, prompt_len, seed=9)
    ref = hf_logits(hf, ids)
    half = load_model(loaded.path, dtype=torch.bfloat16)
    ours = PagedRunner(half.model, half.config, dtype=torch.bfloat16).prefill(ids, [13])
    theirs = hf_logits(copy.deepcopy(hf).to(torch.bfloat16), ids)
    assert (ours - ref).abs().mean() <= 2 * (theirs - ref).abs().mean()


def randomize(model, num_experts: int = 8):
    """Seeded random weights for a transformers model, large enough that greedy steps are no
    ties: norms 1 + N(0, 0.2), the rest N(0, 0.2); DeepSeek's router buffers too (the hash
    table `tid2eid` uniform over the experts, the correction bias N(0, 0.1))."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p)) if "norm" in name else p.normal_(0, 0.2)
        for name, b in model.named_buffers():
            if name.endswith("tid2eid"):
                b.copy_(torch.randint(0, num_experts, b.shape))
            elif name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.1)  # the choice of experts, not their weights, sees it
    return model.eval()

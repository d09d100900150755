"""A Hugging Face model folder of a real shape with random weights, as a user would point at one.

config.json (Qwen2ForCausalLM), safetensors shards with an index, a byte-level BPE tokenizer
trained here on Python's own standard library (its vocabulary padded with unreachable entries
to the model's), a ChatML template with tools (Qwen2.5's) and generation_config.json. Used by
the GPU tests through the product and by bench/gpu_agent.py.
"""

from __future__ import annotations

import json
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tests.runtime.test_chat_template import QWEN25

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@dataclass(frozen=True)
class Shape:
    layers: int = 28
    hidden: int = 3584
    heads: int = 28
    kv_heads: int = 4
    head_dim: int = 128
    ffn: int = 18944
    vocab: int = 152064
    window: int = 1_010_000  # Qwen2.5-7B-Instruct-1M
    rope_theta: float = 10_000_000.0


QWEN25_7B_1M = Shape()
TINY = Shape(layers=2, hidden=256, heads=4, kv_heads=2, head_dim=64, ffn=512, vocab=16384,
             window=32768, rope_theta=1e6)


def write_model_folder(path: Path, shape: Shape = QWEN25_7B_1M, *, device: str | None = None,
                       seed: int = 0, layers_per_shard: int = 4) -> Path:
    """Write the folder (idempotent: an existing complete folder of this shape is kept)."""
    path.mkdir(parents=True, exist_ok=True)
    stamp = path / "shape.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == asdict(shape):
        return path
    _write_config(path, shape)
    _write_tokenizer(path, shape.vocab)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    _write_weights(path, shape, device, seed, layers_per_shard)
    stamp.write_text(json.dumps(asdict(shape)))
    return path


def _write_config(path: Path, s: Shape) -> None:
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": s.hidden, "intermediate_size": s.ffn, "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads,
        "head_dim": s.head_dim, "vocab_size": s.vocab, "max_position_embeddings": s.window,
        "rope_theta": s.rope_theta, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "hidden_act": "silu", "torch_dtype": "bfloat16",
        "bos_token_id": None, "eos_token_id": _special_id(s.vocab, "<|im_end|>"),
    }
    (path / "config.json").write_text(json.dumps(config, indent=1))
    (path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [_special_id(s.vocab, "<|im_end|>"),
                          _special_id(s.vocab, "<|endoftext|>")]}))


def _trained_size(vocab: int) -> int:
    return min(8192, vocab - len(SPECIALS))


def _special_id(vocab: int, token: str) -> int:
    return _trained_size(vocab) + SPECIALS.index(token)


def _write_tokenizer(path: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=_trained_size(vocab), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(str(f) for f in stdlib.glob("*.py"))[:120]
    tok.train(files, trainer)
    data = json.loads(tok.to_str())
    table = data["model"]["vocab"]
    n = len(table)
    data["added_tokens"] = [
        {"id": n + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True} for i, t in enumerate(SPECIALS)]
    # Unreachable entries up to the model's vocabulary: a random model samples every id, and
    # each must decode to something.
    for i in range(n + len(SPECIALS), vocab):
        table[f"<x{i}>"] = i
    (path / "tokenizer.json").write_text(json.dumps(data))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": QWEN25, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "bos_token": None, "model_max_length": 1 << 20}))


def _write_weights(path: Path, s: Shape, device: str, seed: int, per_shard: int) -> None:
    from safetensors.torch import save_file

    gen = torch.Generator(device=device).manual_seed(seed)
    weight_map: dict[str, str] = {}

    def rand(*shape: int, std: float = 0.02) -> torch.Tensor:
        t = torch.empty(shape, dtype=torch.bfloat16, device=device)
        return t.normal_(0.0, std, generator=gen).cpu()

    def save(tensors: dict[str, torch.Tensor], name: str) -> None:
        save_file(tensors, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))

    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    shards = -(-s.layers // per_shard) + 1
    save({"model.embed_tokens.weight": rand(s.vocab, s.hidden),
          "model.norm.weight": torch.ones(s.hidden, dtype=torch.bfloat16),
          "lm_head.weight": rand(s.vocab, s.hidden)}, f"model-00001-of-{shards:05d}.safetensors")
    for first in range(0, s.layers, per_shard):
        tensors = {}
        for i in range(first, min(first + per_shard, s.layers)):
            p = f"model.layers.{i}."
            tensors.update({
                p + "self_attn.q_proj.weight": rand(q, s.hidden),
                p + "self_attn.q_proj.bias": rand(q),
                p + "self_attn.k_proj.weight": rand(kv, s.hidden),
                p + "self_attn.k_proj.bias": rand(kv),
                p + "self_attn.v_proj.weight": rand(kv, s.hidden),
                p + "self_attn.v_proj.bias": rand(kv),
                p + "self_attn.o_proj.weight": rand(s.hidden, q),
                p + "mlp.gate_proj.weight": rand(s.ffn, s.hidden),
                p + "mlp.up_proj.weight": rand(s.ffn, s.hidden),
                p + "mlp.down_proj.weight": rand(s.hidden, s.ffn),
                p + "input_layernorm.weight": torch.ones(s.hidden, dtype=torch.bfloat16),
                p + "post_attention_layernorm.weight": torch.ones(s.hidden,
                                                                  dtype=torch.bfloat16),
            })
        save(tensors, f"model-{first // per_shard + 2:05d}-of-{shards:05d}.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": weight_map}))

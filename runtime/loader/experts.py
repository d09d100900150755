"""Checkpoint expert tensors into the stacked `Experts` parameters (runtime/models/moe.py).

Our layout: gate_up `(E, 2F, H)` = [gate rows | up rows], down `(E, H, F)`, biases `(E, 2F)`,
`(E, H)`. What checkpoints hold, under `model.layers.L.mlp.experts.`:

- Qwen3-MoE on the hub: one tensor per expert, `{e}.gate_proj.weight` `(F, H)`,
  `{e}.up_proj.weight`, `{e}.down_proj.weight` `(H, F)`;
- Qwen3-MoE as transformers 5 holds it: `gate_up_proj` `(E, 2F, H)`, `down_proj` `(E, H, F)`;
- gpt-oss in bf16: `gate_up_proj` `(E, H, 2F)` with gate and up interleaved by column,
  `gate_up_proj_bias` `(E, 2F)` interleaved, `down_proj` `(E, F, H)`, `down_proj_bias`;
- gpt-oss in MXFP4: `gate_up_proj_blocks` / `_scales` and `down_proj_blocks` / `_scales`
  (rows in nn.Linear's layout, gate and up interleaved by row), dequantized expert by expert;
- GGUF (llama.cpp's names, `take_gguf`): `blk.L.ffn_{gate,up,down}_exps.{weight,bias}`, each
  stacked over experts in nn.Linear's layout, gate and up apart (already dequantized).

Each stacked parameter is allocated at its first piece; `check_complete` names the first
checkpoint tensor no file provided.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from runtime.config import ModelConfig
from runtime.errors import CorruptModelFile
from runtime.loader.mxfp4 import dequantize_mxfp4

_EXPERTS = re.compile(r"(model\.layers\.(\d+)\.mlp\.experts)\.(.+)")
_PER_EXPERT = re.compile(r"(\d+)\.(gate_proj|up_proj|down_proj)\.weight")
_PIECE_ROWS = {"gate_proj": 0, "up_proj": 1}  # which half of gate_up
_GGUF = re.compile(r"blk\.(\d+)\.ffn_(gate|up|down)_exps\.(weight|bias)")

Read = Callable[[], torch.Tensor]


@dataclass
class _Stack:
    """One stacked parameter being filled: the pieces seen so far."""

    param: torch.Tensor
    filled: set[object] = field(default_factory=set)


def is_expert_tensor(gguf_name: str) -> bool:
    """Whether a GGUF tensor name is one of llama.cpp's stacked expert tensors."""
    return _GGUF.fullmatch(gguf_name) is not None


class ExpertTensors:
    """Claims a checkpoint's expert tensors and writes them into the model's stacked experts.

    `take(name, read)` returns False for a name that is not an expert tensor (the caller loads
    it as usual); `read` is called only for names it takes. Not thread-safe."""

    def __init__(self, model: nn.Module, cfg: ModelConfig, dtype: torch.dtype,
                 device: torch.device):
        self.model, self.cfg, self.dtype, self.device = model, cfg, dtype, device
        self.gpt_oss = cfg.family == "gpt_oss"
        self._stacks: dict[tuple[int, str], _Stack] = {}
        self._pending: dict[str, torch.Tensor] = {}  # MXFP4 blocks or scales awaiting the other
        self.quantized = False
        self.gguf = False  # names missing tensors as llama.cpp does

    def claims(self, name: str) -> bool:
        """Whether `name` is an expert tensor of a MoE layer this model has."""
        m = _EXPERTS.fullmatch(name)
        return m is not None and self.cfg.is_moe_layer(int(m.group(2)))

    def take(self, name: str, read: Read) -> bool:
        """Place tensor `name` if it is an expert tensor; False otherwise."""
        if not self.claims(name):
            return False
        prefix, layer, rest = _EXPERTS.fullmatch(name).groups()  # type: ignore[union-attr]
        layer = int(layer)
        per_expert = _PER_EXPERT.fullmatch(rest)
        if per_expert and not self.gpt_oss:
            self._per_expert(layer, int(per_expert.group(1)), per_expert.group(2), read, name)
        elif rest.endswith(("_blocks", "_scales")) and self.gpt_oss:
            self._mxfp4(layer, prefix, rest, read)
        elif rest in _STACKED:
            self._stacked(layer, rest, read(), name)
        else:
            raise CorruptModelFile(f"{name} is not an expert tensor this model knows")
        return True

    def take_gguf(self, name: str, read: Read) -> bool:
        """Place GGUF tensor `name` (llama.cpp's stacked expert names); False otherwise."""
        m = _GGUF.fullmatch(name)
        if m is None:
            return False
        self.gguf = True
        layer, kind, suffix = int(m.group(1)), m.group(2), m.group(3)
        if not self.cfg.is_moe_layer(layer) or (suffix == "bias" and not self.gpt_oss):
            raise CorruptModelFile(f"{name} is not an expert tensor this model has")
        param = ("down" if kind == "down" else "gate_up") + ("_bias" if suffix == "bias" else "")
        if kind == "down":
            self._write(layer, param, (), read(), name, "all")
            return True
        f = self.cfg.moe_intermediate_size
        rows = slice(0, f) if kind == "gate" else slice(f, 2 * f)
        self._write(layer, param, (slice(None), rows), read(), name, kind)
        return True

    def check_complete(self, where: object) -> None:
        """Raise CorruptModelFile naming the first expert tensor that never arrived."""
        if self._pending:
            name = next(iter(self._pending))
            other = "scales" if name.endswith("_blocks") else "blocks"
            raise CorruptModelFile(f"{where} has {name} but not its {other}; re-download it")
        for layer in range(self.cfg.num_layers):
            if not self.cfg.is_moe_layer(layer):
                continue
            for param in self._params():
                missing = self._missing(layer, param)
                if missing:
                    raise CorruptModelFile(f"{where} is missing expert tensor {missing}; "
                                           "re-download the model")

    # -- placing ---------------------------------------------------------------------------

    def _per_expert(self, layer: int, e: int, kind: str, read: Read, name: str) -> None:
        if e >= self.cfg.num_experts:
            raise CorruptModelFile(f"{name}: expert {e} of a model with {self.cfg.num_experts}")
        f = self.cfg.moe_intermediate_size
        if kind == "down_proj":
            self._write(layer, "down", (e,), read(), name, e)
        else:
            half = _PIECE_ROWS[kind]
            rows = slice(half * f, (half + 1) * f)
            self._write(layer, "gate_up", (e, rows), read(), name, (e, half))

    def _stacked(self, layer: int, rest: str, value: torch.Tensor, name: str) -> None:
        param = _STACKED[rest]
        if self.gpt_oss:
            value = _gpt_oss_layout(param, value)
        self._write(layer, param, (), value, name, "all")

    def _mxfp4(self, layer: int, prefix: str, rest: str, read: Read) -> None:
        self.quantized = True
        base, part = rest.rsplit("_", 1)  # gate_up_proj / down_proj, blocks / scales
        if base not in ("gate_up_proj", "down_proj"):
            raise CorruptModelFile(f"{prefix}.{rest} is not an MXFP4 expert tensor")
        other = f"{prefix}.{base}_{'scales' if part == 'blocks' else 'blocks'}"
        if other not in self._pending:
            self._pending[f"{prefix}.{rest}"] = read()
            return
        mine, theirs = read(), self._pending.pop(other)
        blocks, scales = (mine, theirs) if part == "blocks" else (theirs, mine)
        param = "gate_up" if base == "gate_up_proj" else "down"
        stack = self._stack(layer, param, f"{prefix}.{base}_blocks")
        for e in range(blocks.shape[0]):  # one expert at a time: fp32 of one, not of all
            w = dequantize_mxfp4(blocks[e], scales[e]).view(blocks.shape[1], -1)
            if param == "gate_up":
                w = torch.cat([w[0::2], w[1::2]])
            _copy(stack.param[e], w, f"{prefix}.{base}_blocks")
        stack.filled.add("all")

    def _write(self, layer: int, param: str, index: tuple, value: torch.Tensor, name: str,
               piece: object) -> None:
        stack = self._stack(layer, param, name)
        _copy(stack.param[index] if index else stack.param, value, name)
        stack.filled.add(piece)

    def _stack(self, layer: int, param: str, name: str) -> _Stack:
        key = (layer, param)
        if key not in self._stacks:
            experts = self.model.get_submodule(f"model.layers.{layer}.mlp.experts")
            shape = getattr(experts, param).shape
            tensor = torch.empty(shape, dtype=self.dtype, device=self.device)
            setattr(experts, param, nn.Parameter(tensor, requires_grad=False))
            self._stacks[key] = _Stack(tensor)
        return self._stacks[key]

    # -- what is missing -------------------------------------------------------------------

    def _params(self) -> tuple[str, ...]:
        return ("gate_up", "down", "gate_up_bias", "down_bias") if self.gpt_oss else (
            "gate_up", "down")

    def _missing(self, layer: int, param: str) -> str | None:
        stack = self._stacks.get((layer, param))
        filled = stack.filled if stack else set()
        prefix = f"model.layers.{layer}.mlp.experts"
        if "all" in filled or {"gate", "up"} <= filled:
            return None
        if self.gguf:
            suffix = "bias" if param.endswith("_bias") else "weight"
            kind = "down" if param.startswith("down") else ("up" if "gate" in filled else "gate")
            return f"blk.{layer}.ffn_{kind}_exps.{suffix}"
        if self.gpt_oss:
            name = _HF_NAME[param]
            if self.quantized and param in ("gate_up", "down"):
                name += "_blocks"
            return f"{prefix}.{name}"
        for e in range(self.cfg.num_experts):
            kinds = ("down_proj",) if param == "down" else ("gate_proj", "up_proj")
            for kind in kinds:
                piece = e if param == "down" else (e, _PIECE_ROWS[kind])
                if piece not in filled:
                    return f"{prefix}.{e}.{kind}.weight"
        return None


# Stacked checkpoint names -> our parameter.
_STACKED = {"gate_up_proj": "gate_up", "down_proj": "down", "gate_up_proj_bias": "gate_up_bias",
            "down_proj_bias": "down_bias"}  # fmt: skip
_HF_NAME = {ours: theirs for theirs, ours in _STACKED.items()}


def _gpt_oss_layout(param: str, value: torch.Tensor) -> torch.Tensor:
    """gpt-oss's bf16 expert tensor in our layout: (in, out) -> (out, in), gate/up apart."""
    if param == "gate_up":  # (E, H, 2F) interleaved columns -> (E, 2F, H) [gate | up]
        return torch.cat([value[..., 0::2], value[..., 1::2]], dim=-1).transpose(1, 2)
    if param == "gate_up_bias":  # (E, 2F) interleaved
        return torch.cat([value[..., 0::2], value[..., 1::2]], dim=-1)
    if param == "down":  # (E, F, H) -> (E, H, F)
        return value.transpose(1, 2)
    return value


def _copy(target: torch.Tensor, value: torch.Tensor, name: str) -> None:
    if value.shape != target.shape:
        raise CorruptModelFile(
            f"tensor {name} has shape {tuple(value.shape)}, expected {tuple(target.shape)}"
        )
    target.copy_(value)

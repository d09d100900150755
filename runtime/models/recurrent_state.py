"""The recurrent state of a hybrid model's linear-attention layers, one slot per sequence.

A linear layer carries a fixed-size state instead of per-token KV: the last `K - 1` inputs of
its causal convolution and the fp32 delta-rule matrix `(H, Dk, Dv)`. The pool holds both for
every linear layer and every slot; a forward binds the slots of its sequences
(`RecurrentStatePool.bind`) and hands the binding to the layers through
`ForwardContext.states`. Each slot records how many tokens its state covers, so a forward that
does not continue exactly where the state stopped fails loudly instead of computing garbage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from runtime.kernels.backend import AttentionMetadata


@dataclass(frozen=True)
class StateShape:
    """One linear layer's state per sequence: conv `(C, K-1)`, recurrent `(H, Dk, Dv)`."""

    conv: tuple[int, int]
    recurrent: tuple[int, int, int]


class RecurrentStatePool:
    """States of every linear layer for `num_slots` sequences; slot `s` covers `tokens[s]`.

    Contract: `alloc` gives a zeroed slot covering 0 tokens; `free` returns it; `copy` makes a
    fork's slot equal its parent's; `snapshot` / `restore` move one slot's states out and in
    (CPU tensors, for the tiers). Only forwards bound through `bind` mutate states."""

    def __init__(self, shapes: dict[int, StateShape], num_slots: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu"):
        self.shapes = shapes
        self.conv = {i: torch.zeros(num_slots, *s.conv, dtype=dtype, device=device)
                     for i, s in shapes.items()}
        self.recurrent = {i: torch.zeros(num_slots, *s.recurrent, dtype=torch.float32,
                                         device=device) for i, s in shapes.items()}
        self.tokens = [0] * num_slots
        self._free = list(range(num_slots - 1, -1, -1))

    def alloc(self) -> int:
        """A zeroed slot; the pool doubles when every slot is taken."""
        if not self._free:
            self._grow(len(self.tokens))
        slot = self._free.pop()
        self.reset(slot)
        return slot

    def _grow(self, n: int) -> None:
        old = len(self.tokens)
        for store in (self.conv, self.recurrent):
            for layer, t in store.items():
                store[layer] = torch.cat([t, t.new_zeros(n, *t.shape[1:])])
        self.tokens += [0] * n
        self._free = list(range(old + n - 1, old - 1, -1))

    def free(self, slot: int) -> None:
        self._free.append(slot)

    def reset(self, slot: int) -> None:
        """Back to the state before any token."""
        for layer in self.shapes:
            self.conv[layer][slot].zero_()
            self.recurrent[layer][slot].zero_()
        self.tokens[slot] = 0

    def copy(self, src: int, dst: int) -> None:
        for layer in self.shapes:
            self.conv[layer][dst].copy_(self.conv[layer][src])
            self.recurrent[layer][dst].copy_(self.recurrent[layer][src])
        self.tokens[dst] = self.tokens[src]

    def snapshot(self, slot: int) -> dict[str, Tensor]:
        """CPU copies of slot `slot`'s states, named `conv.L` / `recurrent.L`."""
        out = {f"conv.{i}": t[slot].to("cpu", copy=True) for i, t in self.conv.items()}
        out.update({f"recurrent.{i}": t[slot].to("cpu", copy=True)
                    for i, t in self.recurrent.items()})
        return out

    def restore(self, slot: int, snap: dict[str, Tensor], tokens: int) -> None:
        """Load a `snapshot` taken after `tokens` tokens into `slot`."""
        for layer in self.shapes:
            self.conv[layer][slot].copy_(snap[f"conv.{layer}"])
            self.recurrent[layer][slot].copy_(snap[f"recurrent.{layer}"])
        self.tokens[slot] = tokens

    def bind(self, slots: list[int], meta: AttentionMetadata) -> BoundStates:
        """The states of one forward's sequences (batch order); checks each continues its slot."""
        for slot, seq_len, q_len in zip(slots, meta.seq_lens_cpu, meta.query_lens_cpu,
                                        strict=True):
            start = seq_len - q_len
            if start == 0:
                self.reset(slot)
            assert self.tokens[slot] == start, (
                f"recurrent state of slot {slot} covers {self.tokens[slot]} tokens; "
                f"the forward starts at {start}")
        return BoundStates(self, slots, meta)


@dataclass
class BoundStates:
    """A pool bound to one forward: `slots[b]` is sequence b's slot."""

    pool: RecurrentStatePool
    slots: list[int]
    meta: AttentionMetadata

    def slot_index(self, device: torch.device) -> Tensor:
        return torch.tensor(self.slots, dtype=torch.long, device=device)

    def finish(self) -> None:
        """After every layer ran: each slot now covers its sequence's tokens."""
        for slot, seq_len in zip(self.slots, self.meta.seq_lens_cpu, strict=True):
            self.pool.tokens[slot] = seq_len


class SequenceStates:
    """The engine's view: one slot per sequence id, taken at its first forward.

    The engine snapshots slots at page boundaries (memory/state_snapshots.py) and restores
    them on reuse, rewind and resume; a fork copies its parent's slot."""

    def __init__(self, pool: RecurrentStatePool):
        self.pool = pool
        self._slots: dict[int, int] = {}

    @staticmethod
    def for_model(model, device: torch.device) -> SequenceStates | None:
        """States for a hybrid model (one with `new_state_pool`), None for the others."""
        make = getattr(model, "new_state_pool", None)
        return None if make is None else SequenceStates(make(4, device))

    def state_bytes(self) -> int:
        """Bytes of one sequence's states (all linear layers)."""
        return sum(t[0].numel() * t.element_size()
                   for store in (self.pool.conv, self.pool.recurrent) for t in store.values())

    def slot(self, seq_id: int) -> int:
        if seq_id not in self._slots:
            self._slots[seq_id] = self.pool.alloc()
        return self._slots[seq_id]

    def bind(self, seq_ids: list[int], meta: AttentionMetadata) -> BoundStates:
        return self.pool.bind([self.slot(i) for i in seq_ids], meta)

    def fork(self, parent: int, child: int) -> None:
        self.pool.copy(self.slot(parent), self.slot(child))

    def restart(self, seq_id: int) -> None:
        self.pool.reset(self.slot(seq_id))

    def free(self, seq_id: int) -> None:
        slot = self._slots.pop(seq_id, None)
        if slot is not None:
            self.pool.free(slot)

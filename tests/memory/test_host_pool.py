"""The host tier: free list, and byte-exact copies device <-> host."""

from __future__ import annotations

import pytest
import torch

from memory.device_pool import DevicePagePool
from memory.host_pool import HostPagePool
from memory.kv_layout import KVLayout

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=8, page_size=4, dtype=torch.bfloat16)


def round_trip(device: str) -> None:
    dev = DevicePagePool(LAYOUT, 6, device)
    host = HostPagePool(LAYOUT, 3, pin_memory=device == "cuda")
    dev.data.normal_()
    want = dev.data[[1, 4]].clone()
    slots = host.alloc(2)
    host.to_host(dev.data, [1, 4], slots)
    dev.data[[1, 4]] = 0  # the compute stream reuses the pages after the copy
    host.to_device(slots, dev.data, [2, 5])
    assert torch.equal(dev.data[[2, 5]], want)
    host.sync_slots(slots)
    as_bytes = host.slot(slots[0]).view(-1).view(torch.uint8).numpy()
    assert (host.slot_bytes(slots[0]) == as_bytes).all()
    assert host.slot_bytes(slots[0]).nbytes == LAYOUT.page_bytes


def test_round_trip_cpu():
    round_trip("cpu")


@pytest.mark.gpu
def test_round_trip_cuda():
    round_trip("cuda")


def test_free_list():
    host = HostPagePool(LAYOUT, 3)
    a = host.alloc(2)
    assert host.num_free == 1 and len(set(a)) == 2
    host.free(a)
    assert host.num_free == 3
    with pytest.raises(AssertionError):
        host.alloc(4)


def test_slot_bytes_write_through_to_the_tensor():
    host = HostPagePool(LAYOUT, 2)
    host.slot_bytes(1)[:] = 0
    host.slot_bytes(1)[:2] = [0x80, 0x3F]  # bf16 1.0, little-endian
    assert host.slot(1).view(-1)[0].item() == 1.0


def test_memory_comes_in_chunks_as_slots_are_first_used(monkeypatch):
    import memory.host_pool as hp

    monkeypatch.setattr(hp, "CHUNK_BYTES", 2 * LAYOUT.page_bytes)
    host = HostPagePool(LAYOUT, 7, pin_memory=False)
    assert host.allocated_bytes == 2 * LAYOUT.page_bytes  # the first chunk only
    slots = host.alloc(5)
    assert host.allocated_bytes == 6 * LAYOUT.page_bytes
    for s in slots:
        host.slot_bytes(s)[:] = s
    for s in slots:
        assert (host.slot(s).view(-1).view(torch.uint8) == s).all()
    host.close()


def test_a_host_that_refuses_to_pin_is_pageable_with_one_warning(monkeypatch, caplog):
    import memory.host_pool as hp

    real = torch.empty

    def refuse(*args, pin_memory=False, **kw):
        if pin_memory:
            raise RuntimeError("CUDA error: out of memory (cudaHostAlloc)")
        return real(*args, **kw)

    monkeypatch.setattr(hp.torch, "empty", refuse)
    monkeypatch.setattr(hp, "CHUNK_BYTES", LAYOUT.page_bytes)
    host = HostPagePool(LAYOUT, 4, pin_memory=True)
    slots = host.alloc(4)
    host.slot_bytes(slots[-1])[:] = 7
    assert (host.slot(slots[-1]).view(-1).view(torch.uint8) == 7).all()
    warnings = [r for r in caplog.records if "cannot pin" in r.getMessage()]
    assert len(warnings) == 1 and "--host-memory" in warnings[0].getMessage()
    host.close()

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

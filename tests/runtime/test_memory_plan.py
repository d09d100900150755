"""The memory plan's arithmetic, with the numbers of an H200 and a Qwen2.5-7B-1M-shaped model."""

from __future__ import annotations

import pytest

from runtime.errors import OutOfMemory
from runtime.memory_plan import (
    DeviceMemory,
    MemoryBudget,
    parse_bytes,
    plan_memory,
)

GB = 10**9
PAGE = 256
PAGE_BYTES = 28 * 2 * PAGE * 4 * 128 * 2  # Qwen2.5-7B, bf16: 56 KiB a token
WINDOW_1M = 1_010_000
H200 = DeviceMemory("cuda", total=150 * GB, free=134 * GB, weights=15 * GB, reserve=4 * GB)


def plan(window=WINDOW_1M, dev=H200, **budget):
    return plan_memory(window, PAGE, PAGE_BYTES, dev, MemoryBudget(**budget),
                       host_available=100 * GB, disk_bytes=50 * GB)


def test_a_1m_window_fits_an_h200_in_bf16():
    p = plan()
    assert p.max_context == WINDOW_1M and not p.notes
    assert p.device_kv_bytes <= 150 * GB * 0.9 - 16 * GB - 4 * GB
    assert p.device_pages * PAGE >= WINDOW_1M
    assert p.host_pages == 50 * GB // PAGE_BYTES  # half the available host memory


def test_max_context_plans_exactly_that():
    p = plan(max_context=131072)
    assert p.max_context == 131072 and not p.notes


def test_max_context_above_the_window_is_capped_with_a_note():
    p = plan(window=32768, max_context=131072)
    assert p.max_context == 32768
    assert p.notes == ("--max-context 131,072 is above the model's window (32,768); "
                       "using 32,768",)


def test_a_window_the_device_cannot_hold_shrinks_with_a_note():
    small = DeviceMemory("cuda", total=80 * GB, free=64 * GB, weights=15 * GB, reserve=4 * GB)
    p = plan(dev=small)
    assert 0 < p.max_context < WINDOW_1M
    assert p.max_context + 4 * PAGE <= p.device_pages * PAGE
    assert len(p.notes) == 1 and "--max-context" in p.notes[0] and "--gpu-memory" in p.notes[0]


def test_a_window_bf16_cannot_hold_offers_fp8_in_the_same_line():
    # Qwen3-Coder-30B-A3B on one H200: 48 layers x 4 KV heads x 128, 61 GB of weights.
    page_bf16, page_fp8 = 48 * 2 * PAGE * 4 * 128 * 2, 48 * 2 * PAGE * 4 * (128 + 4)
    dev = DeviceMemory("cuda", total=150 * GB, free=85 * GB, weights=61 * GB, reserve=4 * GB)
    p = plan_memory(1_048_576, PAGE, page_bf16, dev, MemoryBudget(), 100 * GB, 50 * GB,
                    fp8_page_bytes=page_fp8)
    assert p.max_context < 1_000_000 and len(p.notes) == 1
    holds = int(p.notes[0].split("--kv-dtype fp8 holds ")[1].split()[0].replace(",", ""))
    fp8 = plan_memory(1_048_576, PAGE, page_fp8, dev, MemoryBudget(), 100 * GB, 50 * GB)
    assert holds == fp8.max_context >= 1_000_000 and not fp8.notes
    assert "fp8" not in plan(dev=dev, max_context=131072).notes  # it fits: no offer


def test_an_explicit_context_that_cannot_fit_is_one_line_with_the_numbers():
    small = DeviceMemory("cuda", total=80 * GB, free=64 * GB, weights=15 * GB, reserve=4 * GB)
    with pytest.raises(OutOfMemory) as e:
        plan(dev=small, max_context=1_000_000)
    msg = str(e.value)
    assert "\n" not in msg and "--max-context 1,000,000" in msg and "56 KiB a token" in msg
    fits = int(msg.split("use --max-context ")[1].split()[0].replace(",", ""))
    assert plan(dev=small, max_context=fits).max_context == fits


def test_a_model_larger_than_the_device_fails_with_one_line():
    huge = DeviceMemory("cuda", total=150 * GB, free=10 * GB, weights=130 * GB, reserve=4 * GB)
    with pytest.raises(OutOfMemory, match="does not fit the device") as e:
        plan(dev=huge)
    assert "\n" not in str(e.value)


def test_gpu_memory_fraction_counts_what_others_hold():
    busy = DeviceMemory("cuda", total=150 * GB, free=100 * GB, weights=15 * GB, reserve=4 * GB)
    assert plan(dev=busy, gpu_memory=0.5).device_kv_bytes <= 150 * GB * 0.5 - 50 * GB - 4 * GB
    assert plan(dev=busy, gpu_memory=1.0).device_kv_bytes <= 100 * GB - 4 * GB


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01])
def test_gpu_memory_outside_the_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match="--gpu-memory"):
        MemoryBudget(gpu_memory=bad)


def test_host_memory_flag_sets_the_host_tier():
    assert plan(host_memory=8 * GB).host_pages == 8 * GB // PAGE_BYTES


def test_cpu_plan_holds_the_window_twice():
    cpu = DeviceMemory("cpu", 0, 0, weights=GB, reserve=0)
    p = plan_memory(8192, 64, 64 * 46080, cpu, MemoryBudget(max_context=4096), 10 * GB, GB)
    assert p.max_context == 4096 and p.device_pages >= 2 * 4096 // 64


def test_parse_bytes():
    assert parse_bytes("64G") == 64 << 30
    assert parse_bytes("512m") == 512 << 20
    assert parse_bytes("1.5TiB") == int(1.5 * (1 << 40))
    assert parse_bytes("1000") == 1000
    with pytest.raises(ValueError):
        parse_bytes("lots")

#!/usr/bin/env bash
# Every GPU test but the 7B product journeys (tests/gpu/test_product.py), on a lent H200:
#   bash bench/h200_gpu_tests.sh        (writes junit XML and the log under $OUT)
# Kernel tests run compiled here (the CPU runs them in Triton's interpreter).
set -u
. bench/h200_setup.sh || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pytest -q -p no:cacheprovider --timeout 300 -rfE \
    --junitxml "$OUT/gpu_tests.xml" \
    -m gpu tests/runtime tests/memory tests/server tests/gpu/test_warm_up.py \
    2>&1 | tee "$OUT/gpu_tests.log" | tail -40
python3 -m pytest -q -p no:cacheprovider --timeout 300 -rfE \
    tests/runtime/kernels tests/runtime/test_moe_models.py \
    --junitxml "$OUT/kernel_tests.xml" 2>&1 | tee "$OUT/kernel_tests.log" | tail -40

"""Attention kernels behind one contract.

Files:
- backend.py: AttentionBackend (the contract), AttentionMetadata, the lazy registry.
- torch_ref.py: the reference backend (gather pages, then SDPA); serves the CPU and tests.
"""

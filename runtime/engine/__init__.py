"""The engine: sequences over paged KV, scheduling, running the model, sampling.

Files:
- metadata.py: build AttentionMetadata from per-sequence block tables and lengths.
"""

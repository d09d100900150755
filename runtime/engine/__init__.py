"""The engine: sequences over paged KV, scheduling, running the model, sampling.

Files:
- engine.py: Engine (extend, add_request + step over many requests, generate, fork, truncate).
- postprocess.py: after a sampled token: stops, constraints, safe text; StreamEvent.
- results.py: ExtendResult and GenerationResult.
- sequence.py: Sequence and its device BlockTable that grows without per-step rebuilds.
- scheduler.py: Scheduler (token budget, decode first, chunked prefill round-robin), Request.
- model_runner.py: ModelRunner, batch tensors and the forward; CPU weight layout.
- cuda_graphs.py: DecodeGraphs, decode steps replayed from CUDA graphs per batch bucket.
- kv_pages.py: the KVPages protocol the engine needs, and PrivatePages (no reuse).
- sampling.py: SamplingParams, validated.
- sampler.py: Sampler (greedy, temperature, top-k, top-p, seeds, constraints).
- constraint.py: TokenConstraint, the hook for constrained decoding.
- metadata.py: build AttentionMetadata from per-sequence lists (tests and tools).
"""

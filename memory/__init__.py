"""What is kept: KV pages in tiers (device, host, disk), their index, and the session store.

Files:
- kv_layout.py: KVLayout, the shape of one page (all layers contiguous).
- device_pool.py: DevicePagePool, the device tier tensor and its free list.
- hashing.py: the model fingerprint and the page hash chain that names full pages.
- prefix_index.py: PrefixIndex, chain hash -> tiers, pins and per-tier LRU (ints and bytes only).
- host_pool.py: HostPagePool, host slots (pinned on CUDA) and device <-> host copies on a stream.
- disk_tier.py: DiskTier, content-addressed page files: atomic writes, verified reads, LRU gc.
- write_through.py: WriteThrough, the background thread making sealed pages durable on disk.
- placement.py: Placement, moves between tiers: LRU eviction device -> host -> disk, staging.
- state_snapshots.py: hybrid models' linear-layer states by page hash: host LRU and disk files.
- background_writer.py: BackgroundWriter, file writes on one thread (tails, state snapshots).
- tail_store.py: a sequence's partial last page and last logits, saved beside the pages.
- kv_cache.py: TieredKVCache, the facade the engine uses (alloc, seal, acquire, release, flush).
- cache_usage.py: cumulative page hit and miss counts across processes, for `agent cache stats`.
- store/: the SQLite session store.
"""

"""What is kept: KV pages in tiers (device, host, disk), their index, and the session store.

Files:
- kv_layout.py: KVLayout, the shape of one page (all layers contiguous).
- device_pool.py: DevicePagePool, the device tier tensor and its free list.
"""

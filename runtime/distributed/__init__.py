"""Several GPUs of one host: tensor parallel over torch.distributed, context-parallel prefill.

`RuntimeOptions(tensor_parallel=N)` makes LocalModel.open start N-1 more processes (one per
GPU; gloo on the CPU for tests) that each load their shard of the weights and keep their share
of every KV page in their own tiers; rank 0 drives, the others replay its engine calls.

Files:
- group.py: RankGroup, the collectives (NCCL or gloo), init_group / leave_group.
- split.py: TensorSplit, each rank's slice of each weight; check_splittable's one-line refusals.
- parallel_ops.py: ParallelOps, layer ops with the all-reduce and the head's gather added.
- link.py: Link, rank 0's command pipes to the followers (no timeout while idle).
- agreement.py: sampled tokens, cache hits and constraint verdicts made the same on all ranks.
- rank_engine.py: RankEngine, the one-GPU engine over a rank's share.
- mirror.py: DrivingEngine (rank 0 sends its calls), DrivingKV, follow (the others replay).
- context_parallel.py: long fresh prefills split by tokens (zigzag), CP_MIN_TOKENS.
- lse_attention.py: attention returning its log-sum-exp (FlexAttention on CUDA), merge.
- rank.py: RankContext, what LocalModel.open does differently on one rank.
- launch.py: open_parallel, starting and stopping the follower processes.
- follower.py: a follower's process (`python -m runtime.distributed.follower FD`).
"""

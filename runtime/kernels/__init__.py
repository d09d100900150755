"""Attention kernels behind one contract, and the layer ops every model calls.

Files:
- backend.py: AttentionBackend (the contract), AttentionMetadata, the lazy registry.
- torch_ref.py: the reference backend (gather pages, then SDPA; windows, sinks); CPU and tests.
- layer_ops.py: LayerOps (norm-add, rope, linear/GEMV, SiLU-mul, MoE) per device, OpsOptions.
- triton_ops.py: TritonOps, the CUDA layer ops over the Triton kernels below.
- cpu_quant.py: Int4Linear, GGUF Q4_0/Q4_1 weights packed for torch's CPU int4 kernel.
- torch_moe.py: expert activations and the routed expert sum in torch (gather or sorted).
- torch_linear_attn.py: linear attention in torch: causal conv, gated delta rule (chunk, step).
- torch_mamba2.py: the Mamba-2 selective scan (SSD) in torch: chunked and recurrent step.
- latent_backend.py: LatentAttentionBackend (MLA over paged latent rows: extend, absorbed decode).
- torch_mla.py: MLA in torch: expanded and absorbed attention over gathered latents.
- triton_mla.py: MLA in Triton: the absorbed kernel over paged latents (decode and extend).
- torch_compressed.py: DeepSeek-V4 in torch: tail rope, window pooling, indexer top-k, sinks.
- fp8_kv.py: fp8 (e4m3) KV rows with a scale per token and head: split, quantize, dequantize.
- triton_fp8.py: the fp8 KV store kernel and the e4m3 codecs the attention kernels use.
- triton_moe.py: fused MoE: routes sorted by expert, grouped GEMMs (gate/up + activation, down).
- triton_extend.py: paged extend/prefill attention (GQA-packed tiles, causal skipping, splits).
- triton_decode.py: paged split-KV decode attention and the log-sum-exp merge.
- triton_store.py: the KV store into pages.
- triton_norm.py: fused residual-add + RMSNorm, and in-place RoPE (the GPU decode path).
- triton_linear.py: the batch-1 GEMV (bias, SiLU * up prologue) and silu_mul.
- pdl.py: programmatic dependent launch for the decode-path kernels (Hopper and later).
- triton_backend.py: TritonBackend, the kernels above behind the contract.
- flash_attn_backend.py: FlashAttnBackend over flash-attn's paged API (optional install).
"""

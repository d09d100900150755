"""Turning tokens into tokens: models, loaders, tokenizer, chat templates, the engine, kernels.

Files:
- config.py: ModelConfig (Llama / Qwen2 / Qwen3 family) built from a HF config dict.
- errors.py: the runtime's exception tree; every message is one line naming the fix.
- forward_context.py: per-forward state (backend, KV views, metadata) handed to the model.
- engine/: sequences, scheduler, model runner, sampler and the Engine facade.
- kernels/: the attention backend contract, registry, torch reference and GPU kernels.
- models/: model definitions as plain nn.Modules.
- loader/: weight loaders (HF safetensors folders, GGUF files).
"""

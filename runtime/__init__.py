"""Turning tokens into tokens: models, loaders, tokenizer, chat templates, the engine, kernels.

Files:
- config.py: ModelConfig (Llama / Qwen2 / Qwen3 family) built from a HF config dict.
- config_deepseek.py: the DeepSeek families' config parts (MLA dims, V4 compression, routers).
- errors.py: the runtime's exception tree; every message is one line naming the fix.
- settings.py: the one module reading AGENT_* variables; flags > env > config.toml > defaults.
- model_cache.py: resolving and pulling models (the embedded SmolLM2, HF ids, local paths).
- tokenizer.py: Tokenizer over `tokenizers`, from HF folders or GGUF metadata.
- tokenizer_pre.py: llama.cpp's GGUF pre-tokenizer table (`tokenizer.ggml.pre` -> split rules).
- chat_template.py: ChatTemplate, jinja2 under transformers' conventions; render_delta.
- detokenizer.py: StreamDecoder, streaming text that never splits a UTF-8 character.
- constraints.py: llguidance tool-call constraints (Hermes calls held to their JSON schemas).
- rope.py: rotary embeddings with default, linear, llama3 and YaRN scaling.
- forward_context.py: per-forward state (backend, KV views, metadata) handed to the model.
- local_model.py: LocalModel, a loaded model with its tokenizer, template and engine.
- engine/: sequences, scheduler, model runner, sampler and the Engine facade.
- kernels/: the attention backend contract, registry, torch reference and GPU kernels.
- models/: model definitions as plain nn.Modules.
- loader/: weight loaders (HF safetensors folders, GGUF files).
"""

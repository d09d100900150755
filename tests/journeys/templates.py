"""The chat templates the agent supports, each with a tokenizer that knows its special tokens.

SmolLM2's own (ChatML, no tools), Qwen2.5's (ChatML with tools), Llama 3.1's (header tokens,
tools). All run over the embedded SmolLM2 vocabulary: for Llama 3.1, a copy in which SmolLM2's
unused special tokens are renamed to Llama 3's, so every special id exists in the model's
embedding and a real engine can run the prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tokenizers import Tokenizer as Backend

from runtime.chat_template import ChatTemplate
from runtime.tokenizer import Tokenizer
from tests.runtime.test_chat_template import LLAMA31, QWEN25

# SmolLM2's special tokens given Llama 3's names (ids 3.. are repository markers it never needs).
LLAMA3_NAMES = {
    "<|endoftext|>": "<|end_of_text|>",
    "<repo_name>": "<|begin_of_text|>",
    "<reponame>": "<|start_header_id|>",
    "<file_sep>": "<|end_header_id|>",
    "<filename>": "<|eot_id|>",
    "<gh_stars>": "<|eom_id|>",
    "<issue_start>": "<|python_tag|>",
}
TEMPLATES = ("smollm2", "qwen25", "llama31")


@dataclass(frozen=True)
class Chat:
    """A tokenizer and its chat template."""

    name: str
    tokenizer: Tokenizer
    template: ChatTemplate

    @property
    def stop_ids(self) -> frozenset[int]:
        return self.tokenizer.eos_ids

    @property
    def end_id(self) -> int:
        """The token that ends a turn in this template."""
        end = "<|eot_id|>" if self.name == "llama31" else "<|im_end|>"
        return self.tokenizer.token_to_id(end)


@cache
def chat(name: str, gguf: Path) -> Chat:
    """One of TEMPLATES over the embedded model's vocabulary."""
    smol = Tokenizer.from_gguf(gguf)
    if name == "smollm2":
        tok, source = smol, smol.chat_template
    elif name == "qwen25":
        tok, source = smol, QWEN25
    elif name == "llama31":
        tok, source = _llama3_tokenizer(smol), LLAMA31
    else:
        raise ValueError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}")
    return Chat(name, tok, ChatTemplate(source, bos_token=tok.bos_token,
                                        eos_token=tok.eos_token))


def _llama3_tokenizer(smol: Tokenizer) -> Tokenizer:
    data = json.loads(smol.backend.to_str())
    for added in data["added_tokens"]:
        added["content"] = LLAMA3_NAMES.get(added["content"], added["content"])
    vocab = data["model"]["vocab"]
    for old, new in LLAMA3_NAMES.items():
        vocab[new] = vocab.pop(old)
    backend = Backend.from_str(json.dumps(data))
    bos = backend.token_to_id("<|begin_of_text|>")
    eos = backend.token_to_id("<|eot_id|>")
    return Tokenizer(backend, bos_id=bos, eos_id=eos, chat_template=LLAMA31)

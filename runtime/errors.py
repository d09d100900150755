"""The runtime's exceptions: one tree, each message a single line that names the fix."""

from __future__ import annotations


class RuntimeError_(Exception):
    """Base of every error the runtime raises to the outside world."""


class ModelNotFound(RuntimeError_):
    """A model path, id or cache entry does not exist (message names the pull command)."""


class UnsupportedModel(RuntimeError_):
    """The architecture or a config option is not supported (message lists what is)."""


class CorruptModelFile(RuntimeError_):
    """A weights or tokenizer file cannot be parsed."""


class ContextTooLong(RuntimeError_):
    """A prompt does not fit the model's context window (message gives both lengths)."""


class InvalidSampling(RuntimeError_):
    """Sampling parameters out of range."""


class OutOfPages(RuntimeError_):
    """The KV page pool has no free page left for a sequence."""


class OutOfMemory(RuntimeError_):
    """The model, or the context asked for, does not fit the device (message gives the numbers
    and the flag that changes them)."""

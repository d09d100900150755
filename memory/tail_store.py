"""Tails: a sequence's partial last page and its last logits, saved so a resume recomputes nothing.

A full page is named by its chain hash and shared; the partial page after it belongs to one
sequence and keeps growing. In bf16 the KV of a token depends on the chunk that computed it, so a
new process that recomputed the tail as a chunk of its own would continue differently from the
process that never left (ARCHITECTURE.md, exactness). So the engine saves a tail at the end of
each generation and after a prompt: the KV of the tokens after the last full page (all layers,
only the slots in use), and the fp32 logits of the last token when the sequence has them.

A tail is named `H(h_last_full or fingerprint, tail tokens)` under its own personalisation: the
name spells every token of the sequence (through the chain), so a tail can serve only the exact
same tokens, of the same model and KV layout. Files sit beside the page files as
`<kv>/<fp>/<hh>/<name>.tail`, written atomically (temp + fsync + rename) in the background, and
verified on read (magic, fingerprint, name, lengths, checksum); a bad file is deleted and the
tail recomputed. They count toward the disk tier's budget and its LRU gc like pages.

    magic 8s | version u16 | fingerprint 32s | name 32s | tokens u32 | kv bytes u64 |
    logits count u32 | crc32 of payload u32 | crc32 of the fields before it u32
    payload: tokens int32[n] | kv bytes | logits float32[count]
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memory.background_writer import BackgroundWriter
from memory.disk_tier import DiskTier, read_side_file
from memory.kv_layout import KVLayout

log = logging.getLogger(__name__)

MAGIC = b"RAKVTAIL"
VERSION = 1
SUFFIX = ".tail"
_FIELDS = struct.Struct("<8sH32s32sIQII")
_CRC = struct.Struct("<I")
_PERSON = b"ra-kv-tail"


@dataclass(slots=True)
class Tail:
    """A saved tail: `kv` `[layers, 2, n, kv_heads, head_dim]` on the host, `logits` or None."""

    num_tokens: int
    kv: torch.Tensor
    logits: torch.Tensor | None


class TailStore:
    """Tails of one model fingerprint in a disk tier's directory (see the module doc).

    `save` copies the data to the host at once (the caller may overwrite the page right after)
    and writes the file on a background thread; `flush` waits for those writes. `find` returns
    the longest saved tail whose tokens begin the given ones. Nothing raises for I/O trouble.
    """

    def __init__(self, disk: DiskTier, layout: KVLayout):
        self.disk = disk
        self.layout = layout
        self._writer = BackgroundWriter("kv-tail-write")
        self._saved: set[bytes] = set()  # names written (or being written) by this process

    def name(self, prev: bytes | None, tokens: Sequence[int]) -> bytes:
        h = hashlib.blake2b(prev or self.disk.fingerprint, digest_size=32, person=_PERSON)
        h.update(np.asarray(tokens, dtype="<i4").tobytes())
        return h.digest()

    def path(self, name: bytes) -> Path:
        return self.disk.path(name).with_suffix(SUFFIX)

    # -- writing -------------------------------------------------------------------------------

    def save(self, prev: bytes | None, tokens: Sequence[int], kv: torch.Tensor | None,
             logits: torch.Tensor | None) -> bytes:
        """Save a tail (kv `[layers, 2, n, heads, dim]` for n = len(tokens)); returns its name."""
        name = self.name(prev, tokens)
        if not self.disk.writable or name in self._saved or self.path(name).exists():
            return name  # stored once, like pages: the first computation of these tokens wins
        self._saved.add(name)
        toks = np.asarray(tokens, dtype="<i4")
        kv_bytes = b"" if kv is None else _host_bytes(kv)
        lg = b"" if logits is None else logits.detach().float().cpu().numpy().tobytes()
        self._writer.submit(self._write, name, toks, kv_bytes, lg)
        return name

    def _write(self, name: bytes, toks: np.ndarray, kv: bytes, logits: bytes) -> None:
        payload = b"".join((toks.tobytes(), kv, logits))
        fields = _FIELDS.pack(MAGIC, VERSION, self.disk.fingerprint, name, len(toks), len(kv),
                              len(logits) // 4, zlib.crc32(payload))
        head = fields + _CRC.pack(zlib.crc32(fields))
        if self.disk.write_file(self.path(name), (head, payload)):
            self.disk.account_bytes(len(head) + len(payload))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    # -- reading -------------------------------------------------------------------------------

    def find(self, prev: bytes | None, tokens: Sequence[int]) -> Tail | None:
        """The longest saved tail for a prefix of `tokens` (after the page hashed `prev`)."""
        for n in range(len(tokens), -1, -1):
            tail = self.load(self.name(prev, tokens[:n]), n)
            if tail is not None:
                return tail
        return None

    def load(self, name: bytes, num_tokens: int) -> Tail | None:
        path = self.path(name)
        data = read_side_file(path, "KV tail")
        if data is None:
            return None
        tail, problem = self._parse(data, name, num_tokens)
        if problem:
            log.warning("KV tail file %s is %s; deleted, the tail will be recomputed",
                        path, problem)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # last use, for the LRU gc
        return tail

    def _parse(self, data: bytes, name: bytes, n: int) -> tuple[Tail | None, str | None]:
        size = _FIELDS.size + _CRC.size
        if len(data) < size:
            return None, "truncated (short header)"
        fields = data[: _FIELDS.size]
        magic, version, fp, nm, count, kv_len, n_logits, crc = _FIELDS.unpack(fields)
        (head_crc,) = _CRC.unpack_from(data, _FIELDS.size)
        if magic != MAGIC or zlib.crc32(fields) != head_crc:
            return None, "not a tail file (bad magic or header checksum)"
        if version != VERSION or fp != self.disk.fingerprint or nm != name or count != n:
            return None, "for another model, version or sequence"
        payload = data[size:]
        if len(payload) != 4 * count + kv_len + 4 * n_logits or zlib.crc32(payload) != crc:
            return None, "corrupt (payload length or checksum mismatch)"
        if kv_len != n * self.layout.bytes_per_token:
            return None, "of another KV layout"
        L, two, _, heads, dim = self.layout.page_shape
        if kv_len:
            kv_raw = np.frombuffer(payload, np.uint8, kv_len, 4 * count)
            kv = torch.from_numpy(kv_raw.copy()).view(self.layout.dtype)
            kv = kv.view(L, two, n, heads, dim)
        else:  # a page-aligned prefix saves only its logits (an empty array cannot be viewed)
            kv = torch.empty(L, two, 0, heads, dim, dtype=self.layout.dtype)
        logits = None
        if n_logits:
            raw = np.frombuffer(payload, np.float32, n_logits, 4 * count + kv_len)
            logits = torch.from_numpy(raw.copy())
        return Tail(n, kv, logits), None


def _host_bytes(kv: torch.Tensor) -> bytes:
    """The tensor's raw bytes on the host (a synchronous copy from the device)."""
    host = kv.detach().contiguous().cpu()
    return host.view(-1).view(torch.uint8).numpy().tobytes()

"""The disk tier: one content-addressed file per page, written atomically, verified on read.

Layout: `<root>/kv/<fingerprint hex[:16]>/<hh>/<page hash hex>.page`, `hh` being the hash's first
byte. A file is a 4 KiB header then the raw page bytes (the header is padded so the payload stays
4 KiB aligned, ready for O_DIRECT reads later):

    magic 8s | format version u16 | header bytes u16 | fingerprint 32s | page hash 32s |
    payload length u64 | crc32 of payload u32 | crc32 of the fields before it u32

Equal prefixes get the same name, so they are stored once across sessions and processes.

Durability and sharing: a page is written to a uniquely named temp file in its final directory,
fsynced, renamed over the final name, and the directory is fsynced. Rename is atomic, so a reader
(in any process) sees either no file or a complete one; two writers of one page write equal bytes,
and the last rename wins. `kill -9` mid-write leaves only a temp file, which is never read and is
removed by `gc` once older than `tmp_max_age`. A file that fails any check on read is deleted
with a warning and reported missing, so the caller recomputes the page.

Last use is the file's mtime, bumped on every read (atime is unreliable under noatime or
relatime), so `gc(max_bytes)` deletes least recently used pages first, across all fingerprints
under `<root>/kv`.

A full or unwritable directory turns writes off with one warning (at the first write that
fails); reads keep working where they can, and the caller carries on without the tier.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"RAKVPAGE"
FORMAT_VERSION = 1
HEADER_BYTES = 4096
_FIELDS = struct.Struct("<8sHH32s32sQI")  # everything before the header's own crc
_CRC = struct.Struct("<I")
_FATAL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}
_SUFFIX = ".page"
_TMP_SUFFIX = ".tmp"
_KEPT = (_SUFFIX, ".tail", ".state")  # what the budget counts and gc may delete (pages,
# tails, hybrid models' state snapshots)


@dataclass(frozen=True, slots=True)
class DiskStats:
    """What `<root>/kv` holds: all fingerprints, and this tier's own share."""

    files: int
    bytes: int
    own_files: int
    own_bytes: int
    tmp_files: int
    writable: bool


@dataclass(frozen=True, slots=True)
class GcResult:
    removed_files: int
    removed_bytes: int
    remaining_bytes: int


class DiskTier:
    """Page files for one model fingerprint under `<root>/kv`.

    Thread-safe: `write_many` (the write-through worker), `read_many` (restores) and `gc` may run
    concurrently in threads and in other processes sharing the directory. Nothing here raises
    for I/O trouble: writes return False, reads return False, and the cause is logged.
    """

    def __init__(
        self,
        root: Path,
        fingerprint: bytes,
        page_bytes: int,
        *,
        max_bytes: int | None = None,
        read_threads: int = 4,
    ):
        self.kv_root = Path(root) / "kv"
        self.fingerprint = fingerprint
        self.page_bytes = page_bytes
        self.max_bytes = max_bytes
        self.dir = self.kv_root / fingerprint.hex()[:16]
        self.writable = True
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(read_threads, thread_name_prefix="kv-disk-read")
        self._approx_bytes: int | None = None  # this process's running estimate, for auto-gc
        self.counters = {
            "written": 0,
            "deduped": 0,
            "read": 0,
            "missing": 0,
            "corrupt": 0,
            "write_errors": 0,
        }
        # Directories are made on first write: a tier opened only for stats or gc creates
        # nothing, and an unwritable place is found (and reported once) by the first write.

    # -- names ---------------------------------------------------------------------------------

    def path(self, h: bytes) -> Path:
        hx = h.hex()
        return self.dir / hx[:2] / f"{hx}{_SUFFIX}"

    def contains(self, h: bytes) -> bool:
        return self.path(h).is_file()

    # -- writes --------------------------------------------------------------------------------

    def write(self, h: bytes, payload: np.ndarray) -> bool:
        """Make one page durable (see write_many)."""
        return self.write_many([(h, payload)])[0]

    def write_many(self, items: list[tuple[bytes, np.ndarray]],
                   stamps: list[float] | None = None) -> list[bool]:
        """Write pages durably, fsyncing each directory once per batch; True where the page is
        on disk afterwards (already there counts). `stamps` are the files' mtimes (last use
        for the LRU gc; 0 or None: now). Never raises for I/O errors."""
        done = self._write_many(items)
        for (h, _), stamp, ok in zip(items, stamps or [0.0] * len(items), done):
            if ok and stamp:
                _touch(self.path(h), stamp)
        return done

    def stamp(self, hashes: list[bytes], stamps: list[float]) -> None:
        """Set the last-use times of page files (a restored chain: head newest)."""
        for h, t in zip(hashes, stamps, strict=True):
            _touch(self.path(h), t)

    def _write_many(self, items: list[tuple[bytes, np.ndarray]]) -> list[bool]:
        done = [False] * len(items)
        if not self.writable:
            return done
        staged: list[tuple[int, Path, Path]] = []
        for i, (h, payload) in enumerate(items):
            final = self.path(h)
            if final.exists():  # stored once: the same prefix from another session or process
                _touch(final)
                done[i] = True
                self._count("deduped")
                continue
            tmp = self._write_tmp(final, h, payload)
            if tmp is not None:
                staged.append((i, tmp, final))
        dirs = set()
        for i, tmp, final in staged:
            if self._rename(tmp, final):
                done[i] = True
                dirs.add(final.parent)
        for d in dirs:
            self._fsync_dir(d)
        new_pages = sum(1 for i, _, _ in staged if done[i])
        self._count("written", new_pages)
        self._account(new_pages)
        return done

    def _write_tmp(self, final: Path, h: bytes, payload: np.ndarray) -> Path | None:
        assert payload.nbytes == self.page_bytes, "payload is not one page"
        data = memoryview(payload).cast("B")
        tmp = final.parent / f".{final.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}"
        try:
            self._ensure_dir(final.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, self._header(h, zlib.crc32(data)))
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            return tmp
        except OSError as e:
            _unlink(tmp)
            self._write_failed(e, final)
            return None

    def write_file(self, final: Path, chunks) -> bool:
        """Write `chunks` (bytes-likes) as `final` atomically and durably (temp file, fsync,
        rename, directory fsync); failures follow the tier's error policy. True if written."""
        tmp = final.parent / f".{final.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}"
        try:
            self._ensure_dir(final.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                for chunk in chunks:
                    _write_all(fd, chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            _unlink(tmp)
            self._write_failed(e, final)
            return False
        if not self._rename(tmp, final):
            return False
        self._fsync_dir(final.parent)
        return True

    def _rename(self, tmp: Path, final: Path) -> bool:
        try:
            os.replace(tmp, final)  # atomic; an existing file holds the same bytes
            return True
        except OSError as e:
            _unlink(tmp)
            self._write_failed(e, final)
            return False

    def _ensure_dir(self, d: Path) -> None:
        """Make d and any missing parents, fsyncing each new entry's parent so the directory
        itself survives a crash."""
        if d.is_dir():
            return
        if d.parent != d:
            self._ensure_dir(d.parent)
        try:
            d.mkdir()
        except FileExistsError:
            pass  # made meanwhile by another thread or process
        self._fsync_dir(d.parent)

    def _fsync_dir(self, d: Path) -> None:
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self._write_failed(e, d)

    def _header(self, h: bytes, payload_crc: int) -> bytes:
        fields = _FIELDS.pack(
            MAGIC, FORMAT_VERSION, HEADER_BYTES, self.fingerprint, h, self.page_bytes, payload_crc
        )
        head = fields + _CRC.pack(zlib.crc32(fields))
        return head.ljust(HEADER_BYTES, b"\0")

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def _write_failed(self, e: OSError, where: Path) -> None:
        self._count("write_errors")
        if e.errno in _FATAL:
            self._disable(e)
        else:
            log.warning("KV disk tier: writing %s failed: %s", where, e)

    def _disable(self, e: OSError) -> None:
        with self._lock:
            if not self.writable:
                return
            self.writable = False
        log.warning(
            "KV disk tier at %s disabled (%s); continuing without writing KV pages to "
            "disk. Free space or set AGENT_CACHE_DIR to a writable directory.",
            self.dir,
            e.strerror or e,
        )

    # -- reads ---------------------------------------------------------------------------------

    def read(self, h: bytes) -> np.ndarray | None:
        """One page's verified bytes, or None if missing or bad (the caller recomputes)."""
        out = np.empty(self.page_bytes, np.uint8)
        return out if self.read_into(h, out) else None

    def read_into(self, h: bytes, out: np.ndarray) -> bool:
        """Read and verify one page into `out` (uint8, page_bytes); False if missing or bad."""
        path = self.path(h)
        try:
            with open(path, "rb", buffering=0) as f:
                problem = self._read_verified(f, h, memoryview(out).cast("B"))
                if problem is None:
                    _bump_mtime(f.fileno())
        except FileNotFoundError:
            self._count("missing")
            return False
        except OSError as e:
            log.warning("KV disk tier: reading %s failed: %s", path, e)
            return False
        if problem is not None:
            self._count("corrupt")
            log.warning(
                "KV page file %s is %s; deleted, the page will be recomputed", path, problem
            )
            _unlink(path)
            return False
        self._count("read")
        return True

    def read_many(self, hashes: list[bytes], outs: list[np.ndarray]) -> list[bool]:
        """read_into for many pages on a few threads (large reads straight into `outs`)."""
        if len(hashes) <= 1:
            return [self.read_into(h, o) for h, o in zip(hashes, outs, strict=True)]
        return list(self._pool.map(self.read_into, hashes, outs))

    def _read_verified(self, f, h: bytes, out: memoryview) -> str | None:
        """None if the file is good (payload now in `out`), else what is wrong with it."""
        head = f.read(HEADER_BYTES)
        if len(head) < _FIELDS.size + _CRC.size:
            return "truncated (short header)"
        fields = head[: _FIELDS.size]
        magic, version, head_len, fp, ph, length, crc = _FIELDS.unpack(fields)
        (head_crc,) = _CRC.unpack_from(head, _FIELDS.size)
        if magic != MAGIC or zlib.crc32(fields) != head_crc:
            return "not a page file (bad magic or header checksum)"
        if version != FORMAT_VERSION or head_len != HEADER_BYTES:
            return f"format version {version}, expected {FORMAT_VERSION}"
        if fp != self.fingerprint or ph != h:
            return "for another model or page (fingerprint or hash mismatch)"
        if length != self.page_bytes or len(out) != length:
            return f"{length} payload bytes, expected {self.page_bytes}"
        if os.fstat(f.fileno()).st_size != HEADER_BYTES + length:
            return "truncated or overlong"
        if _readinto_all(f, out) != length:
            return "truncated (short payload)"
        if zlib.crc32(out) != crc:
            return "corrupt (payload checksum mismatch)"
        return None

    # -- maintenance ---------------------------------------------------------------------------

    def stats(self) -> DiskStats:
        files = _scan(self.kv_root)
        pages = [f for f in files if f.name.endswith(_KEPT)]
        own = [f for f in pages if f.parent.parent == self.dir]
        return DiskStats(
            len(pages),
            sum(f.size for f in pages),
            len(own),
            sum(f.size for f in own),
            len(files) - len(pages),
            self.writable,
        )

    def gc(self, max_bytes: int, tmp_max_age: float = 300.0) -> GcResult:
        """Delete stale temp files, then least recently used pages (all fingerprints) until
        the page files total at most `max_bytes`."""
        files = _scan(self.kv_root)
        now = time.time()
        removed, removed_bytes = 0, 0
        pages = []
        for f in files:
            if not f.name.endswith(_KEPT):
                if f.name.endswith(_TMP_SUFFIX) and now - f.mtime >= tmp_max_age:
                    removed += _unlink(f.path)
            else:
                pages.append(f)
        total = sum(f.size for f in pages)
        for f in sorted(pages, key=lambda f: f.mtime):
            if total <= max_bytes:
                break
            if _unlink(f.path):
                removed, removed_bytes, total = removed + 1, removed_bytes + f.size, total - f.size
        with self._lock:
            self._approx_bytes = total
        return GcResult(removed, removed_bytes, total)

    def clear(self, all_models: bool = False) -> None:
        """Delete this fingerprint's pages (or every fingerprint's)."""
        shutil.rmtree(self.kv_root if all_models else self.dir, ignore_errors=True)
        with self._lock:
            self._approx_bytes = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _account(self, new_pages: int) -> None:
        self.account_bytes(new_pages * (HEADER_BYTES + self.page_bytes))

    def account_bytes(self, new_bytes: int) -> None:
        """Keep the size estimate and collect garbage past `max_bytes` (down to 90% of it)."""
        if self.max_bytes is None or not new_bytes:
            return
        with self._lock:
            known = self._approx_bytes
            if known is not None:
                self._approx_bytes = known + new_bytes
        if known is None:
            known = sum(f.size for f in _scan(self.kv_root) if f.name.endswith(_KEPT))
            with self._lock:
                self._approx_bytes = known
        if (self._approx_bytes or 0) > self.max_bytes:
            self.gc(int(self.max_bytes * 0.9))


@dataclass(frozen=True, slots=True)
class _File:
    path: str
    name: str
    parent: Path
    size: int
    mtime: float


def read_side_file(path: Path, what: str) -> bytes | None:
    """The bytes of a file kept beside the pages (a tail, a state snapshot); None when it is
    missing, or unreadable (said once in the log: the caller recomputes what it held)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("%s %s unreadable (%s); recomputing it", what, path, e)
        return None


def _scan(kv_root: Path) -> list[_File]:
    """Every regular file two levels under each fingerprint directory."""
    out: list[_File] = []
    for fp_dir in _subdirs(kv_root):
        for sub in _subdirs(fp_dir):
            try:
                with os.scandir(sub) as it:
                    for e in it:
                        try:
                            st = e.stat(follow_symlinks=False)
                        except OSError:
                            continue  # deleted meanwhile by another process
                        out.append(_File(e.path, e.name, Path(sub), st.st_size, st.st_mtime))
            except OSError:
                continue
    return out


def _subdirs(d: Path) -> list[Path]:
    try:
        with os.scandir(d) as it:
            return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _readinto_all(f, out: memoryview) -> int:
    got = 0
    while got < len(out):
        n = f.readinto(out[got:])
        if not n:
            break
        got += n
    return got


def _touch(path: Path, when: float | None = None) -> None:
    """Set mtime (last use) of an existing page file to `when` (default now), where permitted."""
    try:
        os.utime(path, None if not when else (when, when))
    except OSError:
        pass


def _bump_mtime(fd: int) -> None:
    try:
        os.utime(fd)
    except OSError:
        pass  # a read-only cache still serves reads; it just cannot record last use


def _unlink(path) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False

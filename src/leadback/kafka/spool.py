"""A crash-safe, bounded, FIFO disk spool for Kafka records the broker could not take yet.

Layout of one *slot* directory (one live process owns a slot, see :meth:`Spool.open`)::

    slot-<uuid hex>/
        lock                         flock()ed by the owner for its whole lifetime
        head.pos                     "<segment> <offset>": first record not yet acked
        00000000000000000007.seg     segments, oldest first; only the last one grows
        00000000000000000008.seg

A segment is a sequence of frames (:mod:`~.spool_frames`); slots are claimed with a lock file
(:mod:`~.spool_slots`).

Appends are buffered writes handed to the OS (``flush``) before ``append`` returns, which
survives the death of the process; ``fsync`` happens when a segment is sealed and on close.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from leadback.errors import BackpressureError
from leadback.kafka.spool_frames import SpoolRecord, encode_frame, read_frame
from leadback.kafka.spool_slots import LOCK_FILE, claim_slot, fsync_dir
from leadback.logs import get_logger

log = get_logger(__name__)

_SEGMENT_RE = re.compile(r"\d{20}\.seg")
_HEAD_FILE = "head.pos"


@dataclass(frozen=True)
class SpoolCursor:
    """Opaque position returned by :meth:`Spool.read`; pass it to :meth:`Spool.ack`."""

    segment: int
    offset: int  # byte offset just after the last record returned
    index: int  # records in ``segment`` before ``offset``


@dataclass
class _Segment:
    seq: int
    end: int  # bytes of complete, valid frames
    records: int  # frames in [0, end)


class Spool:
    """Bounded FIFO of records on local disk; at-least-once replay via read() + ack()."""

    def __init__(
        self, directory: Path, lock_fd: int, *, max_bytes: int, segment_bytes: int
    ) -> None:
        """Adopt an already locked slot directory; use :meth:`Spool.open` instead."""
        self._dir = directory
        self._lock_fd = lock_fd
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._segments: list[_Segment] = []
        self._head_offset = 0  # in _segments[0]: first unacked frame
        self._head_index = 0  # frames in _segments[0] before _head_offset
        self._tail: io.BufferedWriter | None = None
        self._sealed = False  # the last segment must not grow (it was found corrupt)
        self._next_seq = 0
        self._closed = False
        self._recover()

    @classmethod
    def open(cls, base_dir: Path, *, max_bytes: int, segment_bytes: int) -> Spool:
        """Claim a slot directory under base_dir (see 'Slots') and recover what it holds.

        The first ``slot-*`` that no live process has locked is adopted (a dead worker's
        leftovers are replayed by whoever opens next); otherwise a new slot is created.
        """
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
        slot, fd = claim_slot(base_dir)
        try:
            return cls(slot, fd, max_bytes=max_bytes, segment_bytes=segment_bytes)
        except BaseException:
            os.close(fd)
            raise

    # -- public -------------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Bytes not yet acked (framing included); what counts against ``max_bytes``."""
        return sum(s.end for s in self._segments) - self._head_offset

    @property
    def pending_records(self) -> int:
        """Records not yet acked."""
        return sum(s.records for s in self._segments) - self._head_index

    @property
    def is_empty(self) -> bool:
        """True when every appended record has been acked."""
        return self.pending_records == 0

    @property
    def directory(self) -> Path:
        """The claimed slot directory."""
        return self._dir

    def append(self, records: Sequence[SpoolRecord]) -> None:
        """Append records at the tail, all or nothing.

        Raises :class:`BackpressureError` (``retry_after=1.0``) if the spool would exceed
        ``max_bytes``. Data is handed to the OS before returning; fsync happens when a
        segment is sealed and on close().
        """
        self._check_open()
        frames = [encode_frame(r) for r in records]
        total = sum(len(f) for f in frames)
        if self.size_bytes + total > self._max_bytes:
            raise BackpressureError(
                f"disk spool full ({self.size_bytes} + {total} > {self._max_bytes} bytes)",
                retry_after=1.0,
            )
        before = len(self._segments)
        last = self._segments[-1] if self._segments else None
        saved = (last.end, last.records, self._sealed) if last else (0, 0, self._sealed)
        try:
            for frame in frames:
                seg = self._segments[-1] if self._segments else None
                # An oversized frame gets a segment of its own rather than being refused.
                if (
                    seg is None
                    or self._sealed
                    or (seg.end > 0 and seg.end + len(frame) > self._segment_bytes)
                ):
                    seg = self._roll()
                self._writer().write(frame)
                seg.end += len(frame)
                seg.records += 1
            if self._tail is not None:
                self._tail.flush()
        except BaseException:
            self._rollback(before, last, saved)
            raise

    def read(
        self, max_records: int, max_bytes: int = 8 * 1024 * 1024
    ) -> tuple[SpoolCursor, list[SpoolRecord]]:
        """The oldest not-yet-acked records, in append order, WITHOUT removing them.

        Returns an empty list when the spool is empty. Repeated read() without ack()
        returns the same records again (at-least-once replay). At least one record is
        returned if any is pending, even if it alone is larger than ``max_bytes``.
        """
        self._check_open()
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        out: list[SpoolRecord] = []
        used = 0
        cursor = self._head_cursor()
        for i, seg in enumerate(list(self._segments)):
            offset, index = (self._head_offset, self._head_index) if i == 0 else (0, 0)
            if offset >= seg.end:
                continue
            with self._path(seg.seq).open("rb") as f:
                f.seek(offset)
                while offset < seg.end and len(out) < max_records:
                    frame = read_frame(f, seg.end - offset)
                    if frame is None:
                        self._drop_rest(seg, offset, index)
                        break
                    record, size = frame
                    if out and used + size > max_bytes:
                        return cursor, out
                    out.append(record)
                    used, offset, index = used + size, offset + size, index + 1
                    cursor = SpoolCursor(seg.seq, offset, index)
            if len(out) >= max_records:
                break
        return cursor, out

    def ack(self, cursor: SpoolCursor) -> None:
        """Mark everything up to the cursor delivered.

        Fully delivered segment files are deleted (the last one stays while it is the
        tail being appended to); the head position is persisted in ``head.pos`` (write tmp +
        os.replace) so a restart does not replay it again. Stale cursors are ignored.
        """
        self._check_open()
        if not self._segments:
            return
        if (cursor.segment, cursor.offset) <= (self._segments[0].seq, self._head_offset):
            return
        target = next((s for s in self._segments if s.seq == cursor.segment), None)
        if target is None or cursor.offset > target.end:
            raise ValueError(f"cursor {cursor} does not belong to this spool")
        done = [s for s in self._segments if s.seq < cursor.segment]
        self._segments = self._segments[len(done) :]
        self._head_offset, self._head_index = cursor.offset, cursor.index
        if cursor.offset >= target.end and len(self._segments) > 1:
            done.append(self._segments.pop(0))
            self._head_offset = self._head_index = 0
        # Persist the head before deleting: a crash in between leaves files recovery deletes.
        self._save_head()
        for seg in done:
            self._path(seg.seq).unlink(missing_ok=True)

    def close(self) -> None:
        """Flush and fsync, remove the slot if it is empty, release the lock; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._seal_tail()
            if self.is_empty:
                self._remove_slot()
            else:
                fsync_dir(self._dir)
        finally:
            os.close(self._lock_fd)

    # -- internals ----------------------------------------------------------------------------

    def _path(self, seq: int) -> Path:
        return self._dir / f"{seq:020d}.seg"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("spool is closed")

    def _head_cursor(self) -> SpoolCursor:
        if not self._segments:
            return SpoolCursor(self._next_seq, 0, 0)
        return SpoolCursor(self._segments[0].seq, self._head_offset, self._head_index)

    def _writer(self) -> io.BufferedWriter:
        if self._tail is None:
            self._tail = self._path(self._segments[-1].seq).open("ab")
        return self._tail

    def _seal_tail(self) -> None:
        if self._tail is not None:
            tail, self._tail = self._tail, None
            try:
                tail.flush()
                os.fsync(tail.fileno())
            finally:
                tail.close()

    def _roll(self) -> _Segment:
        self._seal_tail()
        seg = _Segment(self._next_seq, 0, 0)
        self._next_seq += 1
        self._segments.append(seg)
        self._sealed = False
        return seg

    def _rollback(self, before: int, last: _Segment | None, saved: tuple[int, int, bool]) -> None:
        """Undo a failed append (e.g. disk full) so that it wrote nothing."""
        if self._tail is not None:
            tail, self._tail = self._tail, None
            with contextlib.suppress(OSError):
                tail.close()
        for seg in self._segments[before:]:
            self._path(seg.seq).unlink(missing_ok=True)
        del self._segments[before:]
        if last is not None:
            os.truncate(self._path(last.seq), saved[0])
            last.end, last.records = saved[0], saved[1]
        self._sealed = saved[2]

    def _drop_rest(self, seg: _Segment, offset: int, index: int) -> None:
        """A frame that was valid is not any more (disk corruption): skip the segment's rest."""
        log.error("spool segment corrupt; skipping its rest", segment=seg.seq, offset=offset)
        seg.end, seg.records = offset, index
        if seg is self._segments[-1]:
            self._seal_tail()
            self._sealed = True

    def _save_head(self) -> None:
        seq, offset = self._head_cursor().segment, self._head_offset
        tmp = self._dir / f"{_HEAD_FILE}.tmp"
        tmp.write_text(f"{seq} {offset}\n", encoding="ascii")
        os.replace(tmp, self._dir / _HEAD_FILE)

    def _load_head(self) -> tuple[int, int]:
        path = self._dir / _HEAD_FILE
        try:
            seq, offset = (int(part) for part in path.read_text(encoding="ascii").split())
        except FileNotFoundError:
            return 0, 0
        except ValueError:
            # Replaying too much is harmless (at-least-once); skipping would lose records.
            log.warning("unreadable head.pos; replaying the whole slot", slot=str(self._dir))
            return 0, 0
        return max(seq, 0), max(offset, 0)

    def _recover(self) -> None:
        head_seq, head_offset = self._load_head()
        seqs = sorted(int(p.stem) for p in self._dir.iterdir() if _SEGMENT_RE.fullmatch(p.name))
        # New segments must sort after head.pos, or recovery would take them for acked.
        self._next_seq = max([*seqs, head_seq]) + 1
        live = [seq for seq in seqs if seq >= head_seq]
        for seq in seqs[: len(seqs) - len(live)]:
            self._path(seq).unlink()  # acked; a crash interrupted their deletion
        for i, seq in enumerate(live):
            start = head_offset if seq == head_seq else 0
            seg, index, offset = self._scan(seq, start, last=i == len(live) - 1)
            self._segments.append(seg)
            if i == 0:
                self._head_index, self._head_offset = index, offset
        while self._segments and self._head_offset >= self._segments[0].end:
            self._path(self._segments.pop(0).seq).unlink()
            self._head_offset = self._head_index = 0
        if seqs:
            log.info("spool recovered", slot=str(self._dir), records=self.pending_records)

    def _scan(self, seq: int, head: int, *, last: bool) -> tuple[_Segment, int, int]:
        """Validate a segment; return it with the frame index and offset of the head in it."""
        path = self._path(seq)
        size = path.stat().st_size
        seg = _Segment(seq, 0, 0)
        index = at = 0
        with path.open("rb") as f:
            while seg.end < size:
                frame = read_frame(f, size - seg.end)
                if frame is None:
                    break
                if seg.end < head:  # acked before the restart
                    index, at = index + 1, seg.end + frame[1]
                seg.end += frame[1]
                seg.records += 1
        if seg.end < size and last:
            # The process died mid-write: the tail of the newest segment is torn.
            log.warning(
                "spool: truncating torn tail",
                segment=path.name,
                offset=seg.end,
                dropped_bytes=size - seg.end,
            )
            os.truncate(path, seg.end)
        elif seg.end < size:
            log.error(
                "spool: corrupt record; skipping the rest of the segment",
                segment=path.name,
                offset=seg.end,
                unreadable_bytes=size - seg.end,
            )
        return seg, index, at

    def _remove_slot(self) -> None:
        """Delete an empty slot while still holding its lock; data first, the lock file last."""
        try:
            for seg in self._segments:
                self._path(seg.seq).unlink(missing_ok=True)
            for name in (_HEAD_FILE, f"{_HEAD_FILE}.tmp", LOCK_FILE):
                (self._dir / name).unlink(missing_ok=True)
            self._dir.rmdir()
        except OSError as exc:
            log.warning("could not remove empty spool slot", slot=str(self._dir), error=str(exc))
        self._segments = []

"""The sandbox's log reader when its stream is torn down under it."""

from __future__ import annotations

import time
from collections.abc import Iterator

from services.worker.docker_sandbox import _LogTail


class ClosedUnderTheReader:
    """An attach stream that yields one chunk, then fails as a socket file object closed by another
    thread does (what `_LogTail.close()` does to a read still blocked when the daemon dies)."""

    def __iter__(self) -> Iterator[bytes]:
        yield b"step 1 done\n"
        raise ValueError("I/O operation on closed file.")

    def close(self) -> None:
        pass


def test_a_stream_closed_under_the_reader_ends_the_log_without_a_thread_error() -> None:
    tail = _LogTail(ClosedUnderTheReader(), cap=1024)
    text, truncated = tail.finish(5.0)
    assert text == "step 1 done\n" and not truncated
    assert isinstance(tail.error, ValueError)


class SlowButSteady:
    """An attach stream that takes longer in all than the idle timeout, but never pauses that long:
    a flood read on a loaded machine."""

    def __init__(self, chunks: int, gap_s: float) -> None:
        self.chunks, self.gap_s = chunks, gap_s

    def __iter__(self) -> Iterator[bytes]:
        for i in range(self.chunks):
            time.sleep(self.gap_s)
            yield f"line {i}\n".encode()
        yield b"END-OF-LOG\n"

    def close(self) -> None:
        pass


def test_a_stream_that_keeps_sending_is_read_to_its_last_byte() -> None:
    tail = _LogTail(SlowButSteady(chunks=300, gap_s=0.01), cap=64)  # ≥ 3 s in all, idle timeout 1 s
    text, truncated = tail.finish(1.0)
    assert text.endswith("END-OF-LOG\n") and truncated

"""The sandbox's log reader when its stream is torn down under it."""

from __future__ import annotations

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

"""Live logs of running proposals: capped streams that expire (the kept tail of a finished run is
in its RunResult).
"""

from services.store.base import (
    LIVE_LOG_ENTRY_CHARS,
    LIVE_LOG_MAX_ENTRIES,
    LIVE_LOG_READ_MAX,
    LIVE_LOG_TTL_S,
    StoreBase,
    translate_errors,
)


class LiveLogStore(StoreBase):
    @translate_errors
    def append_live_log(self, proposal_id: str, chunk: str) -> None:
        """Append a chunk of a running proposal's log (the worker calls this as output arrives). Long
        chunks are split; only the newest LIVE_LOG_MAX_ENTRIES entries are kept; the log expires
        LIVE_LOG_TTL_S after the last append."""
        if not chunk:
            return
        key = f"ar:livelog:{proposal_id}"
        pipe = self.r.pipeline(transaction=True)
        for start in range(0, len(chunk), LIVE_LOG_ENTRY_CHARS):
            piece = chunk[start : start + LIVE_LOG_ENTRY_CHARS]
            pipe.xadd(
                key,
                {"chunk": piece.encode("utf-8", "replace")},
                maxlen=LIVE_LOG_MAX_ENTRIES,
                approximate=False,
            )
        pipe.expire(key, LIVE_LOG_TTL_S)
        pipe.execute()

    @translate_errors
    def read_live_log(
        self, proposal_id: str, after: str = "0", limit: int = LIVE_LOG_READ_MAX
    ) -> list[tuple[str, str]]:
        """Entries (entry id, chunk) appended after the entry id `after` ("0": from the oldest kept),
        oldest first; pass the last id back to read on. Never blocks."""
        answer = self.r.xread({f"ar:livelog:{proposal_id}": after}, count=limit)
        if not answer:
            return []
        _, entries = answer[0]
        return [
            (entry_id.decode(), fields[b"chunk"].decode("utf-8", "replace")) for entry_id, fields in entries
        ]

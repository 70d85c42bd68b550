"""program.md versions, append-only."""

from typing import cast

import redis

from services.models import ProgramVersion
from services.store.base import (
    REDIS_MAX_MEMBERS,
    StoreBase,
    optimistic,
    translate_errors,
)


class ProgramStore(StoreBase):
    @translate_errors
    def add_program_version(
        self, text: str, author: str, message: str, *, only_if_empty: bool = False
    ) -> tuple[ProgramVersion, bool]:
        """Append a version of program.md; return (version, created). Text identical to the current
        version creates nothing and returns the current one; with `only_if_empty` (seeding at start-up)
        nothing is created once any version exists. Atomic against concurrent writers."""
        key = "ar:program:versions"

        def attempt(pipe: "redis.client.Pipeline[bytes]") -> tuple[ProgramVersion, bool]:
            raw = cast("bytes | None", pipe.lindex(key, -1))  # immediate while watching
            current = None if raw is None else ProgramVersion.model_validate_json(raw)
            if current is not None and (only_if_empty or current.text == text):
                pipe.reset()
                return current, False
            version = ProgramVersion(
                version=1 if current is None else current.version + 1,
                text=text,
                author=author,
                message=message,
            )
            pipe.multi()
            pipe.rpush(key, version.model_dump_json())
            pipe.execute()
            return version, True

        return optimistic(self.r, [key], attempt)

    @translate_errors
    def program_version(self, version: int | None = None) -> ProgramVersion | None:
        """Version `version` (from 1), or the current one when None; None if there is no such version."""
        if version is not None and not 1 <= version <= REDIS_MAX_MEMBERS:
            return None
        raw = self.r.lindex("ar:program:versions", -1 if version is None else version - 1)
        return None if raw is None else ProgramVersion.model_validate_json(raw)

    @translate_errors
    def program_versions(self) -> list[ProgramVersion]:
        """Every version, oldest first."""
        return [
            ProgramVersion.model_validate_json(raw) for raw in self.r.lrange("ar:program:versions", 0, -1)
        ]

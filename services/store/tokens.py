"""API tokens, stored by their hash."""

import json

import redis

from services.store.base import (
    StoreBase,
    optimistic,
    translate_errors,
)


class TokenStore(StoreBase):
    @translate_errors
    def add_token(self, token_hash: str, name: str, role: str) -> None:
        self.r.hset("ar:tokens", token_hash, json.dumps({"name": name, "role": role}))

    @translate_errors
    def token(self, token_hash: str) -> dict[str, str] | None:
        raw = self.r.hget("ar:tokens", token_hash)
        return None if raw is None else dict(json.loads(raw))

    @translate_errors
    def add_first_token(self, token_hash: str, name: str, role: str) -> bool:
        """Add the token only while no token exists; True if it was added. Atomic: of several processes
        starting at once, one adds its token."""

        def attempt(pipe: "redis.client.Pipeline[bytes]") -> bool:
            if pipe.hlen("ar:tokens"):
                pipe.reset()
                return False
            pipe.multi()
            pipe.hset("ar:tokens", token_hash, json.dumps({"name": name, "role": role}))
            pipe.execute()
            return True

        return optimistic(self.r, ["ar:tokens"], attempt)

    @translate_errors
    def has_tokens(self) -> bool:
        return bool(self.r.hlen("ar:tokens"))

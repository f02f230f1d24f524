"""A Redis in a dict, for the dedupe store's unit tests: the calls the store makes, no more."""

from __future__ import annotations

from typing import Any

from pulse_celery.worker.dedupe import RELEASE_LEASE, RENEW_LEASE, DedupeStore


class FakeRedis:
    """The few redis-py calls the store makes, in a dict; ``down`` makes each raise.

    Its two Lua scripts run as what they say: act on a lease only if it holds the token.
    """

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, int]] = {}
        self.down = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("Connection refused")

    def _get(self, key: str) -> bytes | None:
        entry = self.data.get(key)
        return entry[0].encode() if entry else None

    def get(self, key: str) -> bytes | None:
        self._check()
        return self._get(key)

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    def _set(self, key: str, value: str, px: int, nx: bool = False) -> bool:
        if nx and key in self.data:
            return False
        self.data[key] = (value, px)
        return True

    def _eval(self, script: str, numkeys: int, key: str, token: str, *args: Any) -> int:
        assert numkeys == 1
        if self._get(key) != token.encode():
            return 0
        if script == RELEASE_LEASE:
            del self.data[key]
        else:
            assert script == RENEW_LEASE
            self.data[key] = (token, int(args[0]))
        return 1


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.ops: list[Any] = []

    def set(self, key: str, value: str, px: int, nx: bool = False) -> None:
        self.ops.append(lambda: self.redis._set(key, value, px, nx))

    def get(self, key: str) -> None:
        self.ops.append(lambda: self.redis._get(key))

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> None:
        self.ops.append(lambda: self.redis._eval(script, numkeys, *keys_and_args))

    def execute(self) -> list[Any]:
        self.redis._check()
        return [op() for op in self.ops]


def fake_store(ttl: float = 60.0) -> tuple[DedupeStore, FakeRedis]:
    redis = FakeRedis()
    return DedupeStore("redis://fake", ttl, client=redis), redis

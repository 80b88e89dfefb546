"""The languages the executors run, as the gateway knows them: fetched and cached."""

from __future__ import annotations

import time

from sandmesh.execution.v1 import execution_pb2
from sandmesh.executor.v1 import executor_pb2, executor_pb2_grpc
from sandmesh_runtime import deadlines

REFRESH_S = 30.0


class LanguageCatalog:
    """Languages by id, re-read from an executor at most every REFRESH_S seconds."""

    def __init__(self, executor: executor_pb2_grpc.ExecutorServiceAsyncStub) -> None:
        self._executor = executor
        self._languages: dict[str, execution_pb2.Language] = {}
        self._fetched_at = float("-inf")

    async def all(self) -> dict[str, execution_pb2.Language]:
        """Raises grpc.aio.AioRpcError when no executor answers and nothing is cached."""
        if time.monotonic() - self._fetched_at > REFRESH_S or not self._languages:
            try:
                response = await self._executor.ListLanguages(
                    executor_pb2.ListLanguagesRequest(), timeout=deadlines.timeout()
                )
            except Exception:
                if not self._languages:
                    raise
            else:
                self._languages = {language.id: language for language in response.languages}
                self._fetched_at = time.monotonic()
        return self._languages

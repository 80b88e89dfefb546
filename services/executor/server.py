"""The executor's gRPC servicer: what it can run and how its sandbox stands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import grpc

from sandmesh.executor.v1 import executor_pb2, executor_pb2_grpc
from sandmesh_runtime import errors
from services.executor.languages import LanguageSpec, to_proto
from services.executor.selftest import Layer

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(
        self,
        registry: dict[str, LanguageSpec],
        versions: dict[str, str],
        executor_id: str,
        capacity: int,
        running: Callable[[], int],
        layers: Callable[[], list[Layer]],
    ) -> None:
        self._registry = registry
        self._versions = versions
        self._executor_id = executor_id
        self._capacity = capacity
        self._running = running
        self._layers = layers

    async def ListLanguages(
        self, request: executor_pb2.ListLanguagesRequest, context: Context
    ) -> executor_pb2.ListLanguagesResponse:
        return executor_pb2.ListLanguagesResponse(
            languages=[to_proto(s, self._versions.get(s.id, "")) for s in self._registry.values()]
        )

    async def GetLanguage(
        self, request: executor_pb2.GetLanguageRequest, context: Context
    ) -> executor_pb2.GetLanguageResponse:
        spec = self._registry.get(request.language_id)
        if spec is None:
            raise errors.NotFound(f"language {request.language_id!r} not found")
        return executor_pb2.GetLanguageResponse(
            language=to_proto(spec, self._versions.get(spec.id, ""))
        )

    async def GetSandboxStatus(
        self, request: executor_pb2.GetSandboxStatusRequest, context: Context
    ) -> executor_pb2.GetSandboxStatusResponse:
        return executor_pb2.GetSandboxStatusResponse(
            executor_id=self._executor_id,
            layers=[
                executor_pb2.SandboxLayer(name=layer.name, active=layer.active, detail=layer.detail)
                for layer in self._layers()
            ],
            capacity=self._capacity,
            running=self._running(),
        )

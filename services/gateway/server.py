"""The gateway's gRPC servicer: validates, then forwards within the caller's deadline.

Each handler reads as the protocol. Refusals are raised as domain errors (the runtime's
error hook answers them), downstream calls go through `downstream`, rate limits through
`quotas`, and an execution's events come from `events`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sandmesh_contracts import limits
from sandmesh_contracts.wire import MAX_RESPONSE_BYTES
from sandmesh_queue import outputs
from sandmesh_queue.connection import Queue
from sandmesh_runtime import deadlines, errors
from services.gateway import auth, events, languages, validation
from services.gateway.downstream import Downstream, item_error
from services.gateway.quotas import Quotas
from services.gateway.sessions import SessionStore
from services.gateway.settings import GatewaySettings

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
Violations = list[tuple[str, str]]


def _required(**fields: str) -> None:
    """InvalidArgument naming every id field left empty."""
    empty = [(name, "must not be empty") for name, value in fields.items() if not value]
    if empty:
        raise errors.InvalidArgument(empty)


def _in_seconds(seconds: float) -> float:
    return time.time() + seconds


@dataclass(eq=False)
class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub
    browsers: browser_pb2_grpc.BrowserPoolServiceAsyncStub
    catalog: languages.LanguageCatalog
    quotas: Quotas
    sessions: SessionStore
    queue: Queue
    settings: GatewaySettings

    def __post_init__(self) -> None:
        def downstream(name: str) -> Downstream:
            return Downstream(
                name, self.settings.breaker_cooldown_s, self.settings.downstream_timeout_s
            )

        self._to_scheduler = downstream("scheduler")
        self._to_executor = downstream("executor")
        self._to_browsers = downstream("browser pool")

    # -- languages

    async def _catalog(self) -> dict[str, execution_pb2.Language]:
        return await self._to_executor.call(lambda _: self.catalog.all())

    async def _language_problems(
        self, request: execution_pb2.ExecutionRequest, prefix: str
    ) -> Violations:
        catalog = await self._catalog()
        language = catalog.get(request.language)
        if language is None:
            known = ", ".join(sorted(catalog))
            field = f"{prefix}.language" if prefix else "language"
            return [(field, f"unknown language {request.language!r}; known: {known}")]
        return limits.violations(
            language.min_limits,
            language.max_limits,
            request.limits,
            language.id,
            f"{prefix}.limits" if prefix else "limits",
        )

    async def ListLanguages(
        self, request: gateway_pb2.ListLanguagesRequest, context: Context
    ) -> gateway_pb2.ListLanguagesResponse:
        catalog = await self._catalog()
        return gateway_pb2.ListLanguagesResponse(
            languages=sorted(catalog.values(), key=lambda language: language.id)
        )

    async def GetLanguage(
        self, request: gateway_pb2.GetLanguageRequest, context: Context
    ) -> gateway_pb2.GetLanguageResponse:
        language = (await self._catalog()).get(request.language_id)
        if language is None:
            raise errors.NotFound(f"language {request.language_id!r} not found")
        return gateway_pb2.GetLanguageResponse(language=language)

    # -- executions

    async def _get(self, execution_id: str) -> execution_pb2.Execution:
        request = scheduler_pb2.GetExecutionRequest(
            tenant=auth.current().tenant, execution_id=execution_id
        )
        response = await self._to_scheduler.call(
            lambda timeout: self.scheduler.GetExecution(request, timeout=timeout)
        )
        return response.execution

    async def _submission_problems(
        self, request: gateway_pb2.SubmitExecutionRequest, prefix: str
    ) -> Violations:
        problems = validation.execution_request(
            request.request,
            f"{prefix}request",
            self.settings.max_source_bytes,
            self.settings.max_request_bytes,
        )
        problems += validation.idempotency_key(request.idempotency_key, prefix)
        if not problems:
            problems = await self._language_problems(request.request, f"{prefix}request")
        return problems

    def _enqueue_request(
        self, request: gateway_pb2.SubmitExecutionRequest, deadline_s: float, session_id: str = ""
    ) -> scheduler_pb2.EnqueueRequest:
        deadline = Timestamp()
        deadline.FromNanoseconds(int(deadline_s * 1e9))
        return scheduler_pb2.EnqueueRequest(
            tenant=auth.current().tenant,
            request=request.request,
            idempotency_key=request.idempotency_key,
            deadline=deadline,
            session_id=session_id,
        )

    async def _submit(
        self, request: gateway_pb2.SubmitExecutionRequest, deadline_s: float, session_id: str = ""
    ) -> execution_pb2.Execution:
        problems = await self._submission_problems(request, "")
        if problems:
            raise errors.InvalidArgument(problems)
        await self.quotas.take()
        enqueue = self._enqueue_request(request, deadline_s, session_id)
        response = await self._to_scheduler.call(
            lambda timeout: self.scheduler.Enqueue(enqueue, timeout=timeout)
        )
        if not session_id:
            auth.note_target(response.execution.id)
        return response.execution

    def _follow(
        self, execution_id: str, after_sequence: int = 0
    ) -> AsyncIterator[execution_pb2.ExecutionEvent]:
        return events.follow(
            self.queue, execution_id, after_sequence, lambda: self._get(execution_id)
        )

    async def SubmitExecution(
        self, request: gateway_pb2.SubmitExecutionRequest, context: Context
    ) -> gateway_pb2.SubmitExecutionResponse:
        execution = await self._submit(request, _in_seconds(self.queue.settings.queue_ttl_s))
        return gateway_pb2.SubmitExecutionResponse(execution=execution)

    async def RunExecution(
        self, request: gateway_pb2.RunExecutionRequest, context: Context
    ) -> gateway_pb2.RunExecutionResponse:
        # The run must end by the caller's deadline: that is the job's deadline too.
        deadline = deadlines.current()
        if deadline is None:
            raise errors.InvalidArgument(
                [("deadline", "RunExecution needs a call deadline (a timeout)")]
            )
        submission = gateway_pb2.SubmitExecutionRequest(
            request=request.request, idempotency_key=request.idempotency_key
        )
        execution = await self._submit(submission, deadline)
        async for event in self._follow(execution.id):
            if event.HasField("result"):
                break
        return gateway_pb2.RunExecutionResponse(execution=await self._get(execution.id))

    async def SubmitBatch(
        self, request: gateway_pb2.SubmitBatchRequest, context: Context
    ) -> gateway_pb2.SubmitBatchResponse:
        validation.batch_size("items", len(request.items))
        deadline_s = _in_seconds(self.queue.settings.queue_ttl_s)
        results = []
        for index, item in enumerate(request.items):
            problems = await self._submission_problems(item, f"items[{index}].")
            if problems:
                results.append(item_error(errors.InvalidArgument(problems)))
                continue
            wait_s = await self.quotas.wait()
            if wait_s > 0:
                results.append(
                    item_error(
                        errors.QuotaExceeded(
                            f"over the tenant's rate limit; retry in {wait_s:.1f} s",
                            f"tenant:{auth.current().tenant}",
                            "the tenant's submission rate",
                            wait_s,
                        )
                    )
                )
                continue
            enqueue = self._enqueue_request(item, deadline_s)
            results.append(
                await self._to_scheduler.item(
                    lambda timeout, enqueue=enqueue: self.scheduler.Enqueue(  # type: ignore[misc]
                        enqueue, timeout=timeout
                    )
                )
            )
        return gateway_pb2.SubmitBatchResponse(results=results)

    async def BatchGetExecutions(
        self, request: gateway_pb2.BatchGetExecutionsRequest, context: Context
    ) -> gateway_pb2.BatchGetExecutionsResponse:
        validation.batch_size("execution_ids", len(request.execution_ids))
        tenant = auth.current().tenant
        results = []
        size = 0
        for execution_id in request.execution_ids:
            if size > MAX_RESPONSE_BYTES:
                # The answer must reach a client with gRPC's default 4 MiB receive limit.
                results.append(
                    item_error(
                        errors.ResourceExhausted(
                            "the batch's answer reached its size bound; read this one alone"
                        )
                    )
                )
                continue
            get = scheduler_pb2.GetExecutionRequest(tenant=tenant, execution_id=execution_id)
            item = await self._to_scheduler.item(
                lambda timeout, get=get: self.scheduler.GetExecution(  # type: ignore[misc]
                    get, timeout=timeout
                )
            )
            size += item.ByteSize()
            results.append(item)
        return gateway_pb2.BatchGetExecutionsResponse(results=results)

    async def GetExecution(
        self, request: gateway_pb2.GetExecutionRequest, context: Context
    ) -> gateway_pb2.GetExecutionResponse:
        _required(execution_id=request.execution_id)
        return gateway_pb2.GetExecutionResponse(execution=await self._get(request.execution_id))

    async def WatchExecution(
        self, request: gateway_pb2.WatchExecutionRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.WatchExecutionResponse]:
        _required(execution_id=request.execution_id)
        # Reading it first checks the id belongs to the caller's tenant.
        execution = await self._get(request.execution_id)
        async for event in self._follow(execution.id, request.after_sequence):
            yield gateway_pb2.WatchExecutionResponse(event=event)

    async def ReadOutput(
        self, request: gateway_pb2.ReadOutputRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.ReadOutputResponse]:
        stream = outputs.STREAM_NAMES.get(request.stream)
        problems: Violations = []
        if not request.execution_id:
            problems.append(("execution_id", "must not be empty"))
        if stream is None:
            problems.append(("stream", "must be OUTPUT_STREAM_STDOUT or OUTPUT_STREAM_STDERR"))
        if problems or stream is None:
            raise errors.InvalidArgument(problems)
        execution = await self._get(request.execution_id)
        result = execution.result
        if not result.status:
            raise errors.FailedPrecondition(
                f"execution {execution.id} has not finished; watch it for its live output"
            )
        size = outputs.stream_size(result, stream)
        if request.offset > size:
            raise errors.InvalidArgument(
                [("offset", f"must be at most the {stream}'s size {size}")]
            )
        if not result.output_ref:
            end = size if not request.limit else min(size, request.offset + request.limit)
            inline = result.stdout if stream == "stdout" else result.stderr
            for at in range(request.offset, end, outputs.MAX_CHUNK_BYTES):
                data = inline[at : min(end, at + outputs.MAX_CHUNK_BYTES)]
                yield gateway_pb2.ReadOutputResponse(offset=at, data=data)
            return
        pieces = outputs.read(
            self.queue.js, result.output_ref, stream, request.offset, request.limit
        )
        async for at, data in pieces:
            yield gateway_pb2.ReadOutputResponse(offset=at, data=data)

    async def CancelExecution(
        self, request: gateway_pb2.CancelExecutionRequest, context: Context
    ) -> gateway_pb2.CancelExecutionResponse:
        _required(execution_id=request.execution_id)
        auth.note_target(request.execution_id)
        cancel = scheduler_pb2.CancelExecutionRequest(
            tenant=auth.current().tenant, execution_id=request.execution_id
        )
        response = await self._to_scheduler.call(
            lambda timeout: self.scheduler.CancelExecution(cancel, timeout=timeout)
        )
        return gateway_pb2.CancelExecutionResponse(execution=response.execution)

    # -- dead letters

    async def ListDeadLetters(
        self, request: gateway_pb2.ListDeadLettersRequest, context: Context
    ) -> gateway_pb2.ListDeadLettersResponse:
        listing = scheduler_pb2.ListDeadLettersRequest(
            tenant=auth.current().tenant, page_size=request.page_size, page_token=request.page_token
        )
        response = await self._to_scheduler.call(
            lambda timeout: self.scheduler.ListDeadLetters(listing, timeout=timeout)
        )
        return gateway_pb2.ListDeadLettersResponse(
            dead_letters=response.dead_letters, next_page_token=response.next_page_token
        )

    async def ReplayDeadLetter(
        self, request: gateway_pb2.ReplayDeadLetterRequest, context: Context
    ) -> gateway_pb2.ReplayDeadLetterResponse:
        _required(dead_letter_id=request.dead_letter_id)
        auth.note_target(request.dead_letter_id)
        replay = scheduler_pb2.ReplayDeadLetterRequest(
            tenant=auth.current().tenant, dead_letter_id=request.dead_letter_id
        )
        response = await self._to_scheduler.call(
            lambda timeout: self.scheduler.ReplayDeadLetter(replay, timeout=timeout)
        )
        return gateway_pb2.ReplayDeadLetterResponse(execution=response.execution)

    # -- sessions

    async def _session(self, session_id: str) -> gateway_pb2.Session:
        _required(session_id=session_id)
        session = await self.sessions.get(auth.current().tenant, session_id)
        if session is None:
            raise errors.NotFound(f"session {session_id!r} not found")
        return session

    async def CreateSession(
        self, request: gateway_pb2.CreateSessionRequest, context: Context
    ) -> gateway_pb2.CreateSessionResponse:
        problems = validation.session_source(
            request.language, request.source, self.settings.max_source_bytes
        )
        if not problems:
            problems = await self._language_problems(
                execution_pb2.ExecutionRequest(language=request.language), ""
            )
        if problems:
            raise errors.InvalidArgument(problems)
        session = await self.sessions.create(
            auth.current().tenant, request.language, request.source
        )
        auth.note_target(session.id)
        return gateway_pb2.CreateSessionResponse(session=session)

    async def GetSession(
        self, request: gateway_pb2.GetSessionRequest, context: Context
    ) -> gateway_pb2.GetSessionResponse:
        return gateway_pb2.GetSessionResponse(session=await self._session(request.session_id))

    async def UpdateSessionSource(
        self, request: gateway_pb2.UpdateSessionSourceRequest, context: Context
    ) -> gateway_pb2.UpdateSessionSourceResponse:
        auth.note_target(request.session_id)
        problems = validation.session_source(
            "-", request.source, self.settings.max_source_bytes, allow_empty=True
        )
        if request.base_revision < 1:
            problems.append(
                (
                    "base_revision",
                    f"must be the revision being replaced, got {request.base_revision}",
                )
            )
        if problems:
            raise errors.InvalidArgument(problems)
        session = await self.sessions.save(
            auth.current().tenant, request.session_id, request.source, request.base_revision
        )
        if session is None:
            raise errors.NotFound(f"session {request.session_id!r} not found")
        return gateway_pb2.UpdateSessionSourceResponse(session=session)

    async def CloseSession(
        self, request: gateway_pb2.CloseSessionRequest, context: Context
    ) -> gateway_pb2.CloseSessionResponse:
        auth.note_target(request.session_id)
        await self._session(request.session_id)
        session = await self.sessions.close(auth.current().tenant, request.session_id)
        assert session is not None
        return gateway_pb2.CloseSessionResponse(session=session)

    async def ListSessionExecutions(
        self, request: gateway_pb2.ListSessionExecutionsRequest, context: Context
    ) -> gateway_pb2.ListSessionExecutionsResponse:
        session = await self._session(request.session_id)
        listing = scheduler_pb2.ListExecutionsRequest(
            tenant=auth.current().tenant,
            session_id=session.id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        response = await self._to_scheduler.call(
            lambda timeout: self.scheduler.ListExecutions(listing, timeout=timeout)
        )
        return gateway_pb2.ListSessionExecutionsResponse(
            executions=response.executions, next_page_token=response.next_page_token
        )

    async def RunSession(
        self, request: gateway_pb2.RunSessionRequest, context: Context
    ) -> gateway_pb2.RunSessionResponse:
        auth.note_target(request.session_id)
        session = await self._session(request.session_id)
        if session.closed:
            raise errors.FailedPrecondition(f"session {session.id} is closed")
        await self.quotas.take_session_run(session.id)
        submission = gateway_pb2.SubmitExecutionRequest(
            request=execution_pb2.ExecutionRequest(
                language=session.language,
                source=session.source,
                stdin=request.stdin,
                args=request.args,
                limits=request.limits,
            )
        )
        execution = await self._submit(
            submission, _in_seconds(self.queue.settings.queue_ttl_s), session.id
        )
        return gateway_pb2.RunSessionResponse(execution=execution)

    # -- browser jobs

    async def _browser_job(
        self, page: browser_pb2.PageOptions, call: Callable[[float], Awaitable[T]]
    ) -> T:
        """A browser job for the caller's tenant, under its quota and the pool's breaker."""
        _required(**{"page.url": page.url})
        await self.quotas.take("browser")
        page.tenant = auth.current().tenant
        return await self._to_browsers.call(call)

    async def Screenshot(
        self, request: gateway_pb2.ScreenshotRequest, context: Context
    ) -> gateway_pb2.ScreenshotResponse:
        job = request.screenshot
        response = await self._browser_job(
            job.page, lambda timeout: self.browsers.Screenshot(job, timeout=timeout)
        )
        return gateway_pb2.ScreenshotResponse(screenshot=response)

    async def Pdf(
        self, request: gateway_pb2.PdfRequest, context: Context
    ) -> gateway_pb2.PdfResponse:
        job = request.pdf
        response = await self._browser_job(
            job.page, lambda timeout: self.browsers.Pdf(job, timeout=timeout)
        )
        return gateway_pb2.PdfResponse(pdf=response)

    async def GetContent(
        self, request: gateway_pb2.GetContentRequest, context: Context
    ) -> gateway_pb2.GetContentResponse:
        job = request.content
        response = await self._browser_job(
            job.page, lambda timeout: self.browsers.GetContent(job, timeout=timeout)
        )
        return gateway_pb2.GetContentResponse(content=response)

    async def Evaluate(
        self, request: gateway_pb2.EvaluateRequest, context: Context
    ) -> gateway_pb2.EvaluateResponse:
        job = request.evaluate
        response = await self._browser_job(
            job.page, lambda timeout: self.browsers.Evaluate(job, timeout=timeout)
        )
        return gateway_pb2.EvaluateResponse(evaluate=response)

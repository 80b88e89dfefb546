"""The gateway's gRPC servicer: validates, then forwards within the caller's deadline."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
import nats.errors
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_status import rpc_status
from nats.js.api import ConsumerConfig, DeliverPolicy

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sandmesh_contracts import limits
from sandmesh_contracts.wire import MAX_RESPONSE_BYTES
from sandmesh_queue import outputs, subjects
from sandmesh_queue.connection import Queue
from sandmesh_runtime import deadlines, errors, telemetry
from sandmesh_runtime.resilience import CircuitBreaker
from services.gateway import auth, languages, validation
from services.gateway.sessions import SessionClosed, SessionStore, StaleRevision
from services.gateway.settings import GatewaySettings
from services.gateway.tenants import TenantStore

log = logging.getLogger("sandmesh.gateway")

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
# Codes that say the downstream itself is in trouble; they count against its breaker.
DOWNSTREAM_FAULTS = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)

# A watcher that hears nothing for this long re-reads the state, in case an event was lost.
WATCH_RECHECK_S = 2.0


async def _forward_error(context: Context, error: grpc.aio.AioRpcError) -> NoReturn:
    """Pass a downstream refusal on unchanged, google.rpc details included."""
    status = rpc_status.from_call(error)
    if status is not None:
        await context.abort_with_status(rpc_status.to_status(status))
    await context.abort(error.code(), error.details() or "")
    raise AssertionError("abort returned")  # pragma: no cover


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self,
        scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
        browsers: browser_pb2_grpc.BrowserPoolServiceAsyncStub,
        catalog: languages.LanguageCatalog,
        tenants: TenantStore,
        sessions: SessionStore,
        queue: Queue,
        settings: GatewaySettings,
    ) -> None:
        self._scheduler = scheduler
        self._browsers = browsers
        self._languages = catalog
        self._tenants = tenants
        self._sessions = sessions
        self._queue = queue
        self._settings = settings
        self._breakers = {
            name: CircuitBreaker(name, failures=5, cooldown_s=settings.breaker_cooldown_s)
            for name in ("scheduler", "executor", "browser pool")
        }

    async def _forward(
        self,
        context: Context,
        call: Callable[[float], Awaitable[T]],
        breaker: CircuitBreaker | None = None,
    ) -> T:
        """Run a downstream call with the time left on ours; relay its refusal as ours.

        While the downstream's breaker is open the call is refused at once, not tried.
        """
        breaker = breaker or self._breakers["scheduler"]
        if not breaker.allow():
            await errors.unavailable(
                context, f"the {breaker.name} is unavailable", breaker.retry_after()
            )
        try:
            result = await call(deadlines.timeout(self._settings.downstream_timeout_s))
        except grpc.aio.AioRpcError as error:
            if error.code() in DOWNSTREAM_FAULTS:
                breaker.failed()
            else:
                breaker.succeeded()
            await _forward_error(context, error)
        breaker.succeeded()
        return result

    def _rate(self) -> tuple[float, float]:
        if auth.current().tier == "pro":
            return self._settings.pro_rate_per_s, self._settings.pro_burst
        return self._settings.free_rate_per_s, self._settings.free_burst

    async def _rate_wait(self, context: Context, kind: str = "submit") -> float:
        """Take a `kind` token from the tenant's bucket, shared by every gateway replica
        through Postgres; 0 when granted, else the seconds until one is there."""
        rate, burst = self._rate()
        try:
            return await self._tenants.take_token(f"{kind}:{auth.current().tenant}", rate, burst)
        except Exception:
            await errors.unavailable(context, "the rate limiter is unavailable; denied")

    async def _take_submission_token(self, context: Context, kind: str = "submit") -> None:
        """The tenant's rate limit: over it, RESOURCE_EXHAUSTED with when to come back."""
        caller = auth.current()
        rate, burst = self._rate()
        wait_s = await self._rate_wait(context, kind)
        if wait_s > 0:
            await errors.quota_exceeded(
                context,
                f"tenant {caller.tenant!r} is over its {caller.tier} rate of {rate:g}"
                f" submissions per second",
                f"tenant:{caller.tenant}",
                f"{rate:g} submissions per second, bursts of {burst:g}",
                wait_s,
            )

    async def _language_problems(
        self, context: Context, request: execution_pb2.ExecutionRequest, prefix: str
    ) -> list[tuple[str, str]]:
        catalog = await self._forward(
            context, lambda _: self._languages.all(), self._breakers["executor"]
        )
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
        catalog = await self._forward(
            context, lambda _: self._languages.all(), self._breakers["executor"]
        )
        return gateway_pb2.ListLanguagesResponse(
            languages=sorted(catalog.values(), key=lambda language: language.id)
        )

    async def GetLanguage(
        self, request: gateway_pb2.GetLanguageRequest, context: Context
    ) -> gateway_pb2.GetLanguageResponse:
        catalog = await self._forward(
            context, lambda _: self._languages.all(), self._breakers["executor"]
        )
        language = catalog.get(request.language_id)
        if language is None:
            await errors.abort(
                context, grpc.StatusCode.NOT_FOUND, f"language {request.language_id!r} not found"
            )
        return gateway_pb2.GetLanguageResponse(language=language)

    async def _get(self, context: Context, execution_id: str) -> execution_pb2.Execution:
        request = scheduler_pb2.GetExecutionRequest(
            tenant=auth.current().tenant, execution_id=execution_id
        )
        response = await self._forward(
            context, lambda timeout: self._scheduler.GetExecution(request, timeout=timeout)
        )
        return response.execution

    async def _submission_problems(
        self, context: Context, request: gateway_pb2.SubmitExecutionRequest, prefix: str
    ) -> list[tuple[str, str]]:
        problems = validation.execution_request(
            request.request,
            f"{prefix}request",
            self._settings.max_source_bytes,
            self._settings.max_request_bytes,
        )
        problems += validation.text_problems({f"{prefix}idempotency_key": request.idempotency_key})
        if len(request.idempotency_key) > validation.MAX_KEY_LENGTH:
            problems.append(
                (
                    f"{prefix}idempotency_key",
                    f"must be at most {validation.MAX_KEY_LENGTH} characters,"
                    f" got {len(request.idempotency_key)}",
                )
            )
        if not problems:
            problems = await self._language_problems(context, request.request, f"{prefix}request")
        return problems

    def _enqueue_request(
        self, request: gateway_pb2.SubmitExecutionRequest, deadline_s: float
    ) -> scheduler_pb2.EnqueueRequest:
        deadline = Timestamp()
        deadline.FromNanoseconds(int(deadline_s * 1e9))
        return scheduler_pb2.EnqueueRequest(
            tenant=auth.current().tenant,
            request=request.request,
            idempotency_key=request.idempotency_key,
            deadline=deadline,
        )

    async def _submit(
        self,
        context: Context,
        request: gateway_pb2.SubmitExecutionRequest,
        deadline_s: float,
        session_id: str = "",
    ) -> execution_pb2.Execution:
        problems = await self._submission_problems(context, request, "")
        if problems:
            await errors.invalid_argument(context, problems)
        await self._take_submission_token(context)
        enqueue = self._enqueue_request(request, deadline_s)
        enqueue.session_id = session_id
        response = await self._forward(
            context, lambda timeout: self._scheduler.Enqueue(enqueue, timeout=timeout)
        )
        if not session_id:
            auth.note_target(response.execution.id)
        return response.execution

    async def SubmitExecution(
        self, request: gateway_pb2.SubmitExecutionRequest, context: Context
    ) -> gateway_pb2.SubmitExecutionResponse:
        execution = await self._submit(context, request, time.time() + self._settings.queue_ttl_s)
        return gateway_pb2.SubmitExecutionResponse(execution=execution)

    async def RunExecution(
        self, request: gateway_pb2.RunExecutionRequest, context: Context
    ) -> gateway_pb2.RunExecutionResponse:
        # The run must end by the caller's deadline: that is the job's deadline too.
        deadline = deadlines.current()
        if deadline is None:
            await errors.invalid_argument(
                context, [("deadline", "RunExecution needs a call deadline (a timeout)")]
            )
        submission = gateway_pb2.SubmitExecutionRequest(
            request=request.request, idempotency_key=request.idempotency_key
        )
        execution = await self._submit(context, submission, deadline)
        async for event in self._follow(context, execution.id, 0):
            if event.HasField("result"):
                break
        return gateway_pb2.RunExecutionResponse(execution=await self._get(context, execution.id))

    async def SubmitBatch(
        self, request: gateway_pb2.SubmitBatchRequest, context: Context
    ) -> gateway_pb2.SubmitBatchResponse:
        if not 1 <= len(request.items) <= validation.MAX_BATCH:
            await errors.invalid_argument(
                context,
                [
                    (
                        "items",
                        f"must hold 1 to {validation.MAX_BATCH} items, got {len(request.items)}",
                    )
                ],
            )
        deadline_s = time.time() + self._settings.queue_ttl_s
        results = []
        for index, item in enumerate(request.items):
            problems = await self._submission_problems(context, item, f"items[{index}].")
            if problems:
                results.append(
                    _item_error(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "; ".join(f"{field}: {why}" for field, why in problems),
                    )
                )
                continue
            wait_s = await self._rate_wait(context)
            if wait_s > 0:
                results.append(
                    _item_error(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"over the tenant's rate limit; retry in {wait_s:.1f} s",
                    )
                )
                continue
            enqueue = self._enqueue_request(item, deadline_s)
            results.append(
                await self._item(
                    lambda timeout, enqueue=enqueue: self._scheduler.Enqueue(  # type: ignore[misc]
                        enqueue, timeout=timeout
                    )
                )
            )
        return gateway_pb2.SubmitBatchResponse(results=results)

    async def BatchGetExecutions(
        self, request: gateway_pb2.BatchGetExecutionsRequest, context: Context
    ) -> gateway_pb2.BatchGetExecutionsResponse:
        count = len(request.execution_ids)
        if not 1 <= count <= validation.MAX_BATCH:
            await errors.invalid_argument(
                context,
                [("execution_ids", f"must hold 1 to {validation.MAX_BATCH} ids, got {count}")],
            )
        tenant = auth.current().tenant
        results = []
        size = 0
        for execution_id in request.execution_ids:
            if size > MAX_RESPONSE_BYTES:
                # The answer must reach a client with gRPC's default 4 MiB receive limit.
                results.append(
                    _item_error(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "the batch's answer reached its size bound; read this one on its own",
                    )
                )
                continue
            get = scheduler_pb2.GetExecutionRequest(tenant=tenant, execution_id=execution_id)
            item = await self._item(
                lambda timeout, get=get: self._scheduler.GetExecution(  # type: ignore[misc]
                    get, timeout=timeout
                )
            )
            size += item.ByteSize()
            results.append(item)
        return gateway_pb2.BatchGetExecutionsResponse(results=results)

    async def _item(self, call: Callable[[float], Awaitable[Any]]) -> gateway_pb2.BatchItemResult:
        """One batch item: its execution, or its own error; it never sinks the batch."""
        breaker = self._breakers["scheduler"]
        if not breaker.allow():
            return _item_error(grpc.StatusCode.UNAVAILABLE, "the scheduler is unavailable")
        try:
            response = await call(deadlines.timeout(self._settings.downstream_timeout_s))
        except grpc.aio.AioRpcError as error:
            (breaker.failed if error.code() in DOWNSTREAM_FAULTS else breaker.succeeded)()
            return _item_error(error.code(), error.details() or "")
        breaker.succeeded()
        return gateway_pb2.BatchItemResult(execution=response.execution)

    async def GetExecution(
        self, request: gateway_pb2.GetExecutionRequest, context: Context
    ) -> gateway_pb2.GetExecutionResponse:
        if not request.execution_id:
            await errors.invalid_argument(context, [("execution_id", "must not be empty")])
        return gateway_pb2.GetExecutionResponse(
            execution=await self._get(context, request.execution_id)
        )

    async def ReadOutput(
        self, request: gateway_pb2.ReadOutputRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.ReadOutputResponse]:
        problems = []
        if not request.execution_id:
            problems.append(("execution_id", "must not be empty"))
        stream = outputs.STREAM_NAMES.get(request.stream)
        if stream is None:
            problems.append(("stream", "must be OUTPUT_STREAM_STDOUT or OUTPUT_STREAM_STDERR"))
        if problems or stream is None:
            await errors.invalid_argument(context, problems)
        execution = await self._get(context, request.execution_id)
        result = execution.result
        if not result.status:
            await errors.abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"execution {execution.id} has not finished; watch it for its live output",
            )
        size = outputs.stream_size(result, stream)
        if request.offset > size:
            await errors.invalid_argument(
                context, [("offset", f"must be at most the {stream}'s size {size}")]
            )
        if not result.output_ref:
            end = size if not request.limit else min(size, request.offset + request.limit)
            inline = result.stdout if stream == "stdout" else result.stderr
            for at in range(request.offset, end, outputs.MAX_CHUNK_BYTES):
                data = inline[at : min(end, at + outputs.MAX_CHUNK_BYTES)]
                yield gateway_pb2.ReadOutputResponse(offset=at, data=data)
            return
        try:
            pieces = outputs.read(
                self._queue.js, result.output_ref, stream, request.offset, request.limit
            )
            async for at, data in pieces:
                yield gateway_pb2.ReadOutputResponse(offset=at, data=data)
        except outputs.OutputUnavailable as exc:
            await errors.abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except (ConnectionError, nats.errors.Error) as exc:
            log.warning("output store unavailable", extra={"error": str(exc)})
            await errors.unavailable(context, "the output store is unavailable")

    async def CancelExecution(
        self, request: gateway_pb2.CancelExecutionRequest, context: Context
    ) -> gateway_pb2.CancelExecutionResponse:
        if not request.execution_id:
            await errors.invalid_argument(context, [("execution_id", "must not be empty")])
        auth.note_target(request.execution_id)
        cancel = scheduler_pb2.CancelExecutionRequest(
            tenant=auth.current().tenant, execution_id=request.execution_id
        )
        response = await self._forward(
            context, lambda timeout: self._scheduler.CancelExecution(cancel, timeout=timeout)
        )
        return gateway_pb2.CancelExecutionResponse(execution=response.execution)

    async def ListDeadLetters(
        self, request: gateway_pb2.ListDeadLettersRequest, context: Context
    ) -> gateway_pb2.ListDeadLettersResponse:
        listing = scheduler_pb2.ListDeadLettersRequest(
            tenant=auth.current().tenant, page_size=request.page_size, page_token=request.page_token
        )
        response = await self._forward(
            context, lambda timeout: self._scheduler.ListDeadLetters(listing, timeout=timeout)
        )
        return gateway_pb2.ListDeadLettersResponse(
            dead_letters=response.dead_letters, next_page_token=response.next_page_token
        )

    async def ReplayDeadLetter(
        self, request: gateway_pb2.ReplayDeadLetterRequest, context: Context
    ) -> gateway_pb2.ReplayDeadLetterResponse:
        if not request.dead_letter_id:
            await errors.invalid_argument(context, [("dead_letter_id", "must not be empty")])
        auth.note_target(request.dead_letter_id)
        replay = scheduler_pb2.ReplayDeadLetterRequest(
            tenant=auth.current().tenant, dead_letter_id=request.dead_letter_id
        )
        response = await self._forward(
            context, lambda timeout: self._scheduler.ReplayDeadLetter(replay, timeout=timeout)
        )
        return gateway_pb2.ReplayDeadLetterResponse(execution=response.execution)

    async def _session(self, context: Context, session_id: str) -> gateway_pb2.Session:
        if not session_id:
            await errors.invalid_argument(context, [("session_id", "must not be empty")])
        session = await self._sessions.get(auth.current().tenant, session_id)
        if session is None:
            await errors.abort(
                context, grpc.StatusCode.NOT_FOUND, f"session {session_id!r} not found"
            )
        return session

    async def CreateSession(
        self, request: gateway_pb2.CreateSessionRequest, context: Context
    ) -> gateway_pb2.CreateSessionResponse:
        problems = validation.session_source(
            request.language, request.source, self._settings.max_source_bytes
        )
        if not problems:
            problems = await self._language_problems(
                context, execution_pb2.ExecutionRequest(language=request.language), ""
            )
        if problems:
            await errors.invalid_argument(context, problems)
        session = await self._sessions.create(
            auth.current().tenant, request.language, request.source
        )
        auth.note_target(session.id)
        return gateway_pb2.CreateSessionResponse(session=session)

    async def GetSession(
        self, request: gateway_pb2.GetSessionRequest, context: Context
    ) -> gateway_pb2.GetSessionResponse:
        return gateway_pb2.GetSessionResponse(
            session=await self._session(context, request.session_id)
        )

    async def UpdateSessionSource(
        self, request: gateway_pb2.UpdateSessionSourceRequest, context: Context
    ) -> gateway_pb2.UpdateSessionSourceResponse:
        auth.note_target(request.session_id)
        problems = validation.session_source(
            "-", request.source, self._settings.max_source_bytes, allow_empty=True
        )
        if request.base_revision < 1:
            problems.append(
                (
                    "base_revision",
                    f"must be the revision being replaced, got {request.base_revision}",
                )
            )
        if problems:
            await errors.invalid_argument(context, problems)
        try:
            session = await self._sessions.save(
                auth.current().tenant, request.session_id, request.source, request.base_revision
            )
        except StaleRevision as exc:
            await errors.abort(context, grpc.StatusCode.ABORTED, str(exc))
        except SessionClosed as exc:
            await errors.abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        if session is None:
            await errors.abort(
                context, grpc.StatusCode.NOT_FOUND, f"session {request.session_id!r} not found"
            )
        return gateway_pb2.UpdateSessionSourceResponse(session=session)

    async def CloseSession(
        self, request: gateway_pb2.CloseSessionRequest, context: Context
    ) -> gateway_pb2.CloseSessionResponse:
        auth.note_target(request.session_id)
        await self._session(context, request.session_id)
        session = await self._sessions.close(auth.current().tenant, request.session_id)
        assert session is not None
        return gateway_pb2.CloseSessionResponse(session=session)

    async def ListSessionExecutions(
        self, request: gateway_pb2.ListSessionExecutionsRequest, context: Context
    ) -> gateway_pb2.ListSessionExecutionsResponse:
        session = await self._session(context, request.session_id)
        listing = scheduler_pb2.ListExecutionsRequest(
            tenant=auth.current().tenant,
            session_id=session.id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        response = await self._forward(
            context, lambda timeout: self._scheduler.ListExecutions(listing, timeout=timeout)
        )
        return gateway_pb2.ListSessionExecutionsResponse(
            executions=response.executions, next_page_token=response.next_page_token
        )

    async def RunSession(
        self, request: gateway_pb2.RunSessionRequest, context: Context
    ) -> gateway_pb2.RunSessionResponse:
        auth.note_target(request.session_id)
        session = await self._session(context, request.session_id)
        if session.closed:
            await errors.abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, f"session {session.id} is closed"
            )
        rate = self._settings.session_runs_per_minute
        wait_s = await self._tenants.take_token(f"session:{session.id}", rate / 60.0, rate)
        if wait_s > 0:
            await errors.quota_exceeded(
                context,
                f"session {session.id} is over its {rate:g} runs a minute",
                f"session:{session.id}",
                f"{rate:g} runs a minute",
                wait_s,
            )
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
            context, submission, time.time() + self._settings.queue_ttl_s, session.id
        )
        return gateway_pb2.RunSessionResponse(execution=execution)

    async def _browser_job(
        self, context: Context, page: browser_pb2.PageOptions, call: Callable[[float], Awaitable[T]]
    ) -> T:
        """A browser job for the caller's tenant, under its quota and the pool's breaker."""
        if not page.url:
            await errors.invalid_argument(context, [("page.url", "must not be empty")])
        await self._take_submission_token(context, "browser")
        page.tenant = auth.current().tenant
        return await self._forward(context, call, self._breakers["browser pool"])

    async def Screenshot(
        self, request: gateway_pb2.ScreenshotRequest, context: Context
    ) -> gateway_pb2.ScreenshotResponse:
        job = request.screenshot
        response = await self._browser_job(
            context, job.page, lambda timeout: self._browsers.Screenshot(job, timeout=timeout)
        )
        return gateway_pb2.ScreenshotResponse(screenshot=response)

    async def Pdf(
        self, request: gateway_pb2.PdfRequest, context: Context
    ) -> gateway_pb2.PdfResponse:
        job = request.pdf
        response = await self._browser_job(
            context, job.page, lambda timeout: self._browsers.Pdf(job, timeout=timeout)
        )
        return gateway_pb2.PdfResponse(pdf=response)

    async def GetContent(
        self, request: gateway_pb2.GetContentRequest, context: Context
    ) -> gateway_pb2.GetContentResponse:
        job = request.content
        response = await self._browser_job(
            context, job.page, lambda timeout: self._browsers.GetContent(job, timeout=timeout)
        )
        return gateway_pb2.GetContentResponse(content=response)

    async def Evaluate(
        self, request: gateway_pb2.EvaluateRequest, context: Context
    ) -> gateway_pb2.EvaluateResponse:
        job = request.evaluate
        response = await self._browser_job(
            context, job.page, lambda timeout: self._browsers.Evaluate(job, timeout=timeout)
        )
        return gateway_pb2.EvaluateResponse(evaluate=response)

    async def WatchExecution(
        self, request: gateway_pb2.WatchExecutionRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.WatchExecutionResponse]:
        if not request.execution_id:
            await errors.invalid_argument(context, [("execution_id", "must not be empty")])
        # Reading it first checks the id belongs to the caller's tenant.
        execution = await self._get(context, request.execution_id)
        async for event in self._follow(context, execution.id, request.after_sequence):
            yield gateway_pb2.WatchExecutionResponse(event=event)

    async def _follow(
        self, context: Context, execution_id: str, after_sequence: int
    ) -> AsyncIterator[execution_pb2.ExecutionEvent]:
        """The execution's events after `after_sequence`, in order, ending with its result."""
        try:
            js = self._queue.js
        except ConnectionError:
            await errors.unavailable(context, "the event stream is unavailable")
        config = (
            ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=after_sequence + 1,
            )
            if after_sequence
            else None
        )
        subscription = await js.subscribe(
            subjects.execution_events(execution_id), ordered_consumer=True, config=config
        )
        try:
            while True:
                try:
                    msg = await subscription.next_msg(timeout=WATCH_RECHECK_S)
                except nats.errors.TimeoutError:
                    current = await self._get(context, execution_id)
                    if current.HasField("result") and current.result.status:
                        # No final event came (expired or never sent): end from the record.
                        yield execution_pb2.ExecutionEvent(
                            execution_id=current.id, result=current.result
                        )
                        return
                    continue
                event = execution_pb2.ExecutionEvent.FromString(msg.data)
                event.sequence = msg.metadata.sequence.stream
                if event.HasField("result"):
                    telemetry.link_to_publisher(msg.headers)
                    yield event
                    return
                yield event
        finally:
            await subscription.unsubscribe()


def _item_error(code: grpc.StatusCode, message: str) -> gateway_pb2.BatchItemResult:
    return gateway_pb2.BatchItemResult(error_code=code.value[0], error_message=message)

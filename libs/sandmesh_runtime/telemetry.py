"""OpenTelemetry tracing: one trace per call, carried in gRPC metadata and NATS headers.

Every service records spans (so logs always carry trace and span ids); they leave the
process only when an OTLP/gRPC endpoint is configured. Context travels as W3C
`traceparent`/`tracestate`, the format every OpenTelemetry SDK reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from sandmesh_runtime import interceptors

tracer = trace.get_tracer("sandmesh")

_UNTRACED = ("/grpc.health.", "/grpc.reflection.")


def setup_tracing(service: str, otlp_endpoint: str = "") -> TracerProvider:
    """Record spans as `sandmesh-<service>`; export them over OTLP/gRPC when an endpoint
    (`http://collector:4317`) is given. An `http://` endpoint is plaintext."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"sandmesh-{service}"}))
    if otlp_endpoint:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    trace.set_tracer_provider(provider)
    return provider


def shutdown() -> None:
    """Send the spans still buffered; called once the service has stopped."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context to `headers` (NATS headers or gRPC metadata)."""
    propagate.inject(headers)
    return headers


def current_ids() -> tuple[str, str] | None:
    """The current trace and span ids as hex, for log lines; None outside any span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def link_to_publisher(headers: Mapping[str, str] | None) -> None:
    """Link the current span to the one that published a message it relays (a watch to the
    result it streams), when the message carries one."""
    published = trace.get_current_span(propagate.extract(dict(headers or {}))).get_span_context()
    if published.is_valid:
        trace.get_current_span().add_link(published)


@contextlib.contextmanager
def consuming(name: str, headers: Mapping[str, str] | None, **attributes: str) -> Iterator[None]:
    """A span for handling one queue message, joined to the trace its publisher was in."""
    parent = propagate.extract(dict(headers or {}))
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={"messaging.system": "nats", **attributes},
    ):
        yield


@contextlib.asynccontextmanager
async def tracing_hook(
    method: str, servicer_context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[None]:
    """Call hook: a server span per call, continuing the caller's trace when it sent one."""
    if method.startswith(_UNTRACED):
        yield
        return
    parent = propagate.extract(dict(servicer_context.invocation_metadata() or ()))
    service, _, rpc = method.lstrip("/").partition("/")
    with tracer.start_as_current_span(
        method.lstrip("/"),
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except Exception as exc:
            if not isinstance(exc, grpc.aio.AbortError):
                span.record_exception(exc)
            raise
        finally:
            _record_code(span, interceptors.call_status())


# The codes OpenTelemetry's gRPC conventions count as a server's error; the rest (a bad
# request, a quota reached, a call the client cancelled) are answers, not failures.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _record_code(span: trace.Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, code.name))


def _traced(details: Any) -> Any:
    headers = inject({})
    return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), *headers.items()))


# grpc.aio files an interceptor under the first call kind it implements only, so unary and
# streaming calls each need their own.
class _TraceUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        with tracer.start_as_current_span(
            method.lstrip("/"), kind=SpanKind.CLIENT, attributes={"rpc.system": "grpc"}
        ) as span:
            call = await continuation(_traced(details), request)
            # Waiting here makes the span cover the whole call; the caller reads the same
            # (cached) outcome from `call`.
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call
            code = await call.code()
            _record_code(span, code)
            return call


class _TraceStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        # A stream can outlive any span opened here; the server's span carries its duration.
        return await continuation(_traced(details), request)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that carry the current trace into every outgoing call."""
    return [_TraceUnary(), _TraceStream()]

"""Generated requests for every public RPC: always a well-formed status, and a refused
request leaves nothing behind."""

from __future__ import annotations

from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandmesh.gateway.v1 import gateway_pb2
from sandmesh_devstack.mesh import Mesh
from tests.helpers.cli import make_tenant
from tests.helpers.servers import Servers

FD = pb_descriptor.FieldDescriptor
SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]
# Codes a server answers on purpose; INTERNAL and UNKNOWN mean it broke.
BROKEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

_INTS = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_ENUM: (-(2**31), 2**31 - 1),  # out-of-range enum values included
}
_TEXT = st.one_of(
    st.text(max_size=40),
    st.just(""),
    st.just("python3"),
    st.just("print('hi')"),
    st.just("\u202e\U0001f600\x00\ud7ff"),
    st.just("x" * 300_000),  # past the source and request bounds
)


def _scalar(field: pb_descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FD.TYPE_STRING:
        return _TEXT
    if field.type == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    low, high = _INTS[field.type]
    return st.one_of(st.integers(low, high), st.sampled_from([0, 1, low, high]))


def messages(descriptor: pb_descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor` with every field drawn, or left unset, at random."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.type == FD.TYPE_MESSAGE:
            nested = field.message_type
            if nested is None or depth > 3 or nested.full_name.startswith("google.protobuf"):
                continue
            value: st.SearchStrategy[Any] = messages(nested, depth + 1)
        else:
            value = _scalar(field)
        if field.is_repeated:
            value = st.lists(value, max_size=3)
        fields[field.name] = st.one_of(st.none(), value)

    def build(values: dict[str, Any]) -> Message:
        instance = _class_of(descriptor)()
        for name, chosen in values.items():
            if chosen is None:
                continue
            field = descriptor.fields_by_name[name]
            if field.is_repeated:
                target = getattr(instance, name)
                for item in chosen:
                    if field.type == FD.TYPE_MESSAGE:
                        target.add().CopyFrom(item)
                    else:
                        target.append(item)
            elif field.type == FD.TYPE_MESSAGE:
                getattr(instance, name).CopyFrom(chosen)
            else:
                setattr(instance, name, chosen)
        return instance

    return st.fixed_dictionaries(fields).map(build)


def _class_of(descriptor: pb_descriptor.Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def stored(url: str, tenant: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM executions WHERE tenant = %s),"
            " (SELECT count(*) FROM sessions WHERE tenant = %s)",
            (tenant, tenant),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_every_rpc_answers_generated_requests_with_a_proper_status(
    method: str, mesh: Mesh, servers: Servers
) -> None:
    tenant, _, key = make_tenant(servers)
    rpc = SERVICE.methods_by_name[method]
    request_class = _class_of(rpc.input_type)
    response_class = _class_of(rpc.output_type)
    path = f"/{SERVICE.full_name}/{method}"
    metadata = (("authorization", f"Bearer {key}"),)
    channel = grpc.insecure_channel(
        mesh.services["gateway"].target,
        options=[("grpc.max_send_message_length", 16 * 1024 * 1024)],
    )

    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(request=messages(rpc.input_type))
    def check(request: Message) -> None:
        before = stored(servers.postgres.url, tenant)
        code = grpc.StatusCode.OK
        try:
            if rpc.server_streaming:
                stream = channel.unary_stream(
                    path, request_class.SerializeToString, response_class.FromString
                )
                for _ in stream(request, timeout=5, metadata=metadata):
                    pass
            else:
                unary = channel.unary_unary(
                    path, request_class.SerializeToString, response_class.FromString
                )
                unary(request, timeout=5, metadata=metadata)
        except grpc.RpcError as error:
            code = error.code()
        assert code not in BROKEN, f"{method} answered {code} to {request}"
        if code not in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED):
            assert stored(servers.postgres.url, tenant) == before, (
                f"{method} kept a refused request"
            )

    try:
        check()
    finally:
        channel.close()

"""SSRF policy: the pool never lets a page reach a non-allowlisted private address.

The `forbidden` server listens on 127.0.0.2, which the test pool does not allowlist; any
request it records is a request the policy let through.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypeAlias

import grpc
import pytest

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from services.browser_pool.url_policy import Allowlist, PolicyError, UrlPolicy
from tests.browser.conftest import PageServer, page

if TYPE_CHECKING:
    Stub: TypeAlias = browser_pb2_grpc.BrowserPoolServiceAsyncStub


async def _denied(pool: Stub, url: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await pool.GetContent(browser_pb2.GetContentRequest(page=page(url)), timeout=30)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED, raised.value.details()
    return raised.value.details() or ""


async def test_page_on_a_private_address_is_denied(pool: Stub, forbidden: PageServer) -> None:
    details = await _denied(pool, forbidden.url("/secret"))
    assert "127.0.0.2" in details and "non-public" in details
    assert forbidden.hits == []


async def test_redirect_to_a_private_address_is_denied(
    pool: Stub, pages: PageServer, forbidden: PageServer
) -> None:
    details = await _denied(pool, pages.url(f"/redirect?to={forbidden.url('/secret')}"))
    assert forbidden.url("/secret") in details
    assert forbidden.hits == []


async def test_fetch_from_page_javascript_is_denied(
    pool: Stub, pages: PageServer, forbidden: PageServer
) -> None:
    probe = """async (url) => {
        try { await fetch(url, {mode: 'no-cors'}); return 'reached'; }
        catch (e) { return 'blocked'; }
    }"""
    response = await pool.Evaluate(
        browser_pb2.EvaluateRequest(
            page=page(pages.url("/")),
            function=probe,
            args_json=json.dumps([forbidden.url("/from-js")]),
        ),
        timeout=30,
    )
    assert json.loads(response.result_json) == "blocked"
    # The same call to an allowed address goes through, so the block is the policy's.
    allowed = await pool.Evaluate(
        browser_pb2.EvaluateRequest(
            page=page(pages.url("/")), function=probe, args_json=json.dumps([pages.url("/ok")])
        ),
        timeout=30,
    )
    assert json.loads(allowed.result_json) == "reached"
    assert forbidden.hits == []


async def test_websocket_from_page_javascript_is_denied(
    pool: Stub, pages: PageServer, forbidden: PageServer
) -> None:
    probe = """(url) => new Promise((done) => {
        const socket = new WebSocket(url);
        socket.onopen = () => done('open');
        socket.onclose = () => done('closed');
        socket.onerror = () => done('error');
    })"""
    ws_url = forbidden.base.replace("http", "ws", 1) + "/socket"
    response = await pool.Evaluate(
        browser_pb2.EvaluateRequest(
            page=page(pages.url("/")), function=probe, args_json=json.dumps([ws_url])
        ),
        timeout=30,
    )
    assert json.loads(response.result_json) in ("closed", "error")
    assert forbidden.hits == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "chrome://version",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[::ffff:127.0.0.2]/",
        "http://10.0.0.1/",
    ],
)
async def test_schemes_and_addresses_denied_up_front(pool: Stub, url: str) -> None:
    await _denied(pool, url)


async def test_iframe_and_image_to_a_private_address_are_denied(
    pool: Stub, pages: PageServer, forbidden: PageServer
) -> None:
    inject = """(url) => new Promise((done) => {
        const frame = document.createElement('iframe');
        frame.src = url + '/frame';
        const img = new Image();
        img.onerror = () => done('image blocked');
        img.onload = () => done('image loaded');
        img.src = url + '/image.png';
        document.body.append(frame, img);
    })"""
    response = await pool.Evaluate(
        browser_pb2.EvaluateRequest(
            page=page(pages.url("/")), function=inject, args_json=json.dumps([forbidden.base])
        ),
        timeout=30,
    )
    assert json.loads(response.result_json) == "image blocked"
    assert forbidden.hits == []


@pytest.mark.parametrize(
    ("allowlist", "url", "allowed"),
    [
        ("", "https://93.184.215.14/", True),
        ("", "http://127.0.0.1:8080/", False),
        ("", "http://[::1]/", False),
        ("", "http://100.64.1.1/", False),  # carrier-grade NAT, not public
        ("", "http://[fd00:ec2::254]/", False),  # AWS IPv6 metadata
        ("", "http://0.0.0.0/", False),
        ("", "http://localhost/", False),
        ("", "ftp://93.184.215.14/", False),
        ("", "data:text/html,hi", True),
        ("127.0.0.1", "http://127.0.0.1:8080/", True),
        ("127.0.0.1", "http://127.0.0.2/", False),
        ("10.1.0.0/16", "http://10.1.2.3/", True),
        ("10.1.0.0/16", "http://10.2.0.1/", False),
        ("intranet.example", "http://intranet.example/", True),
        ("", "ws://127.0.0.1:9/", False),
        ("", "wss://93.184.215.14/", True),
        # IPv6 spellings of IPv4 addresses are judged by the IPv4 address they carry.
        ("", "http://[::127.0.0.1]/", False),  # IPv4-compatible
        ("", "http://[::ffff:127.0.0.1]/", False),  # IPv4-mapped
        ("", "http://[::ffff:0:127.0.0.1]/", False),  # IPv4-translated (SIIT)
        ("", "http://[64:ff9b::7f00:1]/", False),  # NAT64 well-known prefix
        ("", "http://[64:ff9b::a9fe:a9fe]/", False),  # NAT64 to the metadata address
        ("", "http://[64:ff9b:1::5db8:d70e]/", False),  # local-use NAT64
        ("", "http://[2002:7f00:1::]/", False),  # 6to4
        ("", "http://[2002:a00:1::1]/", False),  # 6to4 of 10.0.0.1
        ("", "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", False),  # Teredo
        ("", "http://[2a00:1450::5efe:7f00:1]/", False),  # ISATAP
        ("", "http://[64:ff9b::5db8:d70e]/", True),  # NAT64 of a public address
        ("", "http://[2002:5db8:d70e::1]/", True),  # 6to4 of a public address
        ("", "http://[2a00:1450:4001:80b::200e]/", True),
        ("127.0.0.1", "http://[::ffff:127.0.0.1]/", True),  # the same address, allowlisted
        ("127.0.0.1", "http://[::127.0.0.1]/", False),  # not the allowlisted address
    ],
)
async def test_policy_rules(allowlist: str, url: str, allowed: bool) -> None:
    policy = UrlPolicy(Allowlist.parse(allowlist))
    assert (await policy.check(url) is None) == allowed


async def test_reserved_ports_are_denied_even_when_allowlisted() -> None:
    policy = UrlPolicy(Allowlist.parse("127.0.0.1"), reserved={("127.0.0.1", 9222)})
    assert await policy.check("http://127.0.0.1:9222/json/version") is not None
    assert await policy.check("http://127.0.0.1:9223/") is None


def test_bad_allowlist_entry_is_refused() -> None:
    with pytest.raises(PolicyError):
        Allowlist.parse("10.0.0.0/33")

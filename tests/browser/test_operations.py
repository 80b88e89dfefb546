"""Each operation against a local page server, in real Chromium; isolation between jobs."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, TypeAlias

import grpc
import pytest
from PIL import Image

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from sandmesh_runtime import errors
from tests.browser.conftest import PageServer, page

if TYPE_CHECKING:
    Stub: TypeAlias = browser_pb2_grpc.BrowserPoolServiceAsyncStub


async def test_screenshot_png_is_the_viewport(pool: Stub, pages: PageServer) -> None:
    response = await pool.Screenshot(
        browser_pb2.ScreenshotRequest(
            page=page(pages.url("/"), viewport=browser_pb2.Viewport(width=640, height=480))
        ),
        timeout=30,
    )
    image = Image.open(io.BytesIO(response.image))
    assert (image.format, image.size) == ("PNG", (640, 480))
    assert response.format == browser_pb2.IMAGE_FORMAT_PNG


async def test_screenshot_jpeg_full_page_and_clip(pool: Stub, pages: PageServer) -> None:
    viewport = browser_pb2.Viewport(width=400, height=300)
    full = await pool.Screenshot(
        browser_pb2.ScreenshotRequest(
            page=page(pages.url("/tall"), viewport=viewport),
            format=browser_pb2.IMAGE_FORMAT_JPEG,
            jpeg_quality=60,
            full_page=True,
        ),
        timeout=30,
    )
    image = Image.open(io.BytesIO(full.image))
    assert image.format == "JPEG"
    assert image.size[0] == 400 and image.size[1] >= 3000

    clipped = await pool.Screenshot(
        browser_pb2.ScreenshotRequest(
            page=page(pages.url("/tall"), viewport=viewport),
            clip=browser_pb2.Clip(x=10, y=20, width=100, height=50),
        ),
        timeout=30,
    )
    assert Image.open(io.BytesIO(clipped.image)).size == (100, 50)


async def test_pdf(pool: Stub, pages: PageServer) -> None:
    response = await pool.Pdf(
        browser_pb2.PdfRequest(page=page(pages.url("/")), landscape=True), timeout=30
    )
    assert response.pdf.startswith(b"%PDF")


async def test_content_html_text_and_final_url(pool: Stub, pages: PageServer) -> None:
    target = pages.url("/redirect?to=/")
    response = await pool.GetContent(browser_pb2.GetContentRequest(page=page(target)), timeout=30)
    assert '<h1 id="greeting">Hello, pool</h1>' in response.html
    assert "Hello, pool" in response.text and "Plain text here." in response.text
    assert response.final_url == pages.url("/")


async def test_evaluate_with_json_arguments(pool: Stub, pages: PageServer) -> None:
    response = await pool.Evaluate(
        browser_pb2.EvaluateRequest(
            page=page(pages.url("/"), user_agent="sandmesh-test/1.0"),
            function="(a, b) => ({sum: a + b.n, title: document.title, ua: navigator.userAgent})",
            args_json=json.dumps([2, {"n": 3}]),
        ),
        timeout=30,
    )
    assert json.loads(response.result_json) == {
        "sum": 5,
        "title": "Pool test",
        "ua": "sandmesh-test/1.0",
    }


async def test_wait_for_selector(pool: Stub, pages: PageServer) -> None:
    response = await pool.GetContent(
        browser_pb2.GetContentRequest(
            page=page(
                pages.url("/late"),
                wait_until=browser_pb2.WAIT_UNTIL_SELECTOR,
                wait_selector="#late",
            )
        ),
        timeout=30,
    )
    assert "arrived late" in response.text


async def test_network_idle(pool: Stub, pages: PageServer) -> None:
    response = await pool.GetContent(
        browser_pb2.GetContentRequest(
            page=page(pages.url("/"), wait_until=browser_pb2.WAIT_UNTIL_NETWORK_IDLE)
        ),
        timeout=30,
    )
    assert "Hello, pool" in response.text


async def test_evaluate_errors_are_page_errors(pool: Stub, pages: PageServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await pool.Evaluate(
            browser_pb2.EvaluateRequest(
                page=page(pages.url("/")), function="() => { throw new Error('boom') }"
            ),
            timeout=30,
        )
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "boom" in (raised.value.details() or "")


async def test_selector_that_never_appears_ends_at_the_deadline(
    pool: Stub, pages: PageServer
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await pool.GetContent(
            browser_pb2.GetContentRequest(
                page=page(pages.url("/"), wait_selector="#never"),
            ),
            timeout=1.5,
        )
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize(
    ("request_", "field", "description"),
    [
        (
            browser_pb2.ScreenshotRequest(
                page=page("http://127.0.0.1/", viewport=browser_pb2.Viewport(width=0, height=10))
            ),
            "page.viewport.width",
            "page.viewport.width must be between 1 and 4096, got 0",
        ),
        (browser_pb2.ScreenshotRequest(page=page("")), "page.url", "page.url is required"),
        (
            browser_pb2.ScreenshotRequest(
                page=page("http://127.0.0.1/"),
                full_page=True,
                clip=browser_pb2.Clip(width=5, height=5),
            ),
            "clip",
            "clip and full_page cannot be combined",
        ),
        (
            browser_pb2.EvaluateRequest(
                page=page("http://127.0.0.1/"), function="() => 1", args_json='{"a": 1}'
            ),
            "args_json",
            "args_json must be a JSON array",
        ),
        (
            browser_pb2.GetContentRequest(
                page=page("http://127.0.0.1/", wait_until=browser_pb2.WAIT_UNTIL_SELECTOR)
            ),
            "page.wait_selector",
            "page.wait_selector is required to wait for a selector",
        ),
    ],
)
async def test_bad_input_names_the_field(
    pool: Stub, request_: object, field: str, description: str
) -> None:
    method = {
        browser_pb2.ScreenshotRequest: pool.Screenshot,
        browser_pb2.EvaluateRequest: pool.Evaluate,
        browser_pb2.GetContentRequest: pool.GetContent,
    }[type(request_)]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(request_, timeout=10)  # type: ignore[operator]
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad_request,) = errors.details_of(raised.value)
    assert (field, description) in [(v.field, v.description) for v in bad_request.field_violations]


async def test_cookies_and_storage_do_not_pass_between_jobs(pool: Stub, pages: PageServer) -> None:
    read_state = "() => ({cookie: document.cookie, stored: localStorage.getItem('secret')})"
    first = await pool.Evaluate(
        browser_pb2.EvaluateRequest(
            page=page(pages.url("/cookie"), tenant="tenant-a"), function=read_state
        ),
        timeout=30,
    )
    assert json.loads(first.result_json) == {
        "cookie": "session=job-one; script=job-one",
        "stored": "job-one",
    }
    pages.hits.clear()
    second = await pool.Evaluate(
        browser_pb2.EvaluateRequest(
            page=page(pages.url("/cookie-free"), tenant="tenant-b"), function=read_state
        ),
        timeout=30,
    )
    assert json.loads(second.result_json) == {"cookie": "", "stored": None}
    # Nor did the browser send the first job's cookie to the server.
    assert [headers.get("Cookie") for _, headers in pages.hits] == [None] * len(pages.hits)

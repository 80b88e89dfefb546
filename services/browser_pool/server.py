"""The browser pool's gRPC servicer: validate, translate to the domain, map failures to codes."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

import grpc
from playwright.async_api import Error as PlaywrightError

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from sandmesh_runtime import errors
from services.browser_pool import operations
from services.browser_pool.operations import PageSpec, WaitFor
from services.browser_pool.pool import Pool

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

MAX_DIMENSION = 4096
MAX_URL = 8192
MAX_USER_AGENT = 512
MAX_TENANT = 128
MAX_FUNCTION = 100_000
MAX_ARGS_JSON = 1_000_000

_WAIT = {
    browser_pb2.WAIT_UNTIL_UNSPECIFIED: WaitFor.LOAD,
    browser_pb2.WAIT_UNTIL_LOAD: WaitFor.LOAD,
    browser_pb2.WAIT_UNTIL_NETWORK_IDLE: WaitFor.NETWORK_IDLE,
    browser_pb2.WAIT_UNTIL_SELECTOR: WaitFor.SELECTOR,
}
_FORMATS = (
    browser_pb2.IMAGE_FORMAT_UNSPECIFIED,
    browser_pb2.IMAGE_FORMAT_PNG,
    browser_pb2.IMAGE_FORMAT_JPEG,
)


def _dimension(field: str, value: int, violations: list[tuple[str, str]]) -> None:
    if not 1 <= value <= MAX_DIMENSION:
        violations.append((field, f"{field} must be between 1 and {MAX_DIMENSION}, got {value}"))


def _page_spec(page: browser_pb2.PageOptions, violations: list[tuple[str, str]]) -> PageSpec:
    if not page.url:
        violations.append(("page.url", "page.url is required"))
    elif len(page.url) > MAX_URL:
        violations.append(("page.url", f"page.url must be at most {MAX_URL} characters"))
    elif any(c.isspace() or ord(c) < 32 for c in page.url):
        violations.append(("page.url", "page.url must not contain spaces or control characters"))
    elif not urlsplit(page.url).scheme:
        violations.append(("page.url", "page.url must be an absolute URL"))
    wait_for = _WAIT.get(page.wait_until)
    if wait_for is None:
        violations.append(("page.wait_until", f"unknown wait_until {page.wait_until}"))
        wait_for = WaitFor.LOAD
    if page.wait_selector and page.wait_until == browser_pb2.WAIT_UNTIL_UNSPECIFIED:
        wait_for = WaitFor.SELECTOR
    if wait_for is WaitFor.SELECTOR and not page.wait_selector:
        violations.append(
            ("page.wait_selector", "page.wait_selector is required to wait for a selector")
        )
    viewport = operations.DEFAULT_VIEWPORT
    if page.HasField("viewport"):
        _dimension("page.viewport.width", page.viewport.width, violations)
        _dimension("page.viewport.height", page.viewport.height, violations)
        viewport = (page.viewport.width, page.viewport.height)
    if len(page.user_agent) > MAX_USER_AGENT or any(ord(c) < 32 for c in page.user_agent):
        violations.append(
            (
                "page.user_agent",
                f"page.user_agent must be at most {MAX_USER_AGENT} printable characters",
            )
        )
    if len(page.tenant) > MAX_TENANT:
        violations.append(("page.tenant", f"page.tenant must be at most {MAX_TENANT} characters"))
    return PageSpec(
        url=page.url,
        wait_for=wait_for,
        selector=page.wait_selector,
        viewport=viewport,
        user_agent=page.user_agent,
        tenant=page.tenant,
    )


class BrowserPoolServicer(browser_pb2_grpc.BrowserPoolServiceServicer):
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def _spec(
        self, page: browser_pb2.PageOptions, violations: list[tuple[str, str]], context: Context
    ) -> PageSpec:
        spec = _page_spec(page, violations)
        if violations:
            raise errors.InvalidArgument(violations)
        # The top-level URL is refused before it takes a page; the browser checks it again.
        reason = await self._pool.policy.check(spec.url)
        if reason is not None:
            raise errors.PermissionDenied(f"page.url is not allowed: {reason}")
        return spec

    async def _serve(self, work: Awaitable[T], context: Context) -> T:
        """The job's answer; Playwright's own errors mean the browser is in trouble."""
        try:
            return await work
        except PlaywrightError as exc:
            raise errors.Unavailable(f"browser error: {exc.message.splitlines()[0]}") from exc

    async def Screenshot(
        self, request: browser_pb2.ScreenshotRequest, context: Context
    ) -> browser_pb2.ScreenshotResponse:
        violations: list[tuple[str, str]] = []
        if request.format not in _FORMATS:
            violations.append(("format", f"unknown format {request.format}"))
        jpeg = request.format == browser_pb2.IMAGE_FORMAT_JPEG
        if request.jpeg_quality and not jpeg:
            violations.append(("jpeg_quality", "jpeg_quality applies to IMAGE_FORMAT_JPEG only"))
        if request.jpeg_quality > 100:
            violations.append(
                ("jpeg_quality", f"jpeg_quality must be at most 100, got {request.jpeg_quality}")
            )
        clip = None
        if request.HasField("clip"):
            if request.full_page:
                violations.append(("clip", "clip and full_page cannot be combined"))
            _dimension("clip.width", request.clip.width, violations)
            _dimension("clip.height", request.clip.height, violations)
            c = request.clip
            clip = (c.x, c.y, c.width, c.height)
        spec = await self._spec(request.page, violations, context)
        image = await self._serve(
            operations.screenshot(
                self._pool,
                spec,
                jpeg=jpeg,
                full_page=request.full_page,
                clip=clip,
                quality=request.jpeg_quality or None,
            ),
            context,
        )
        return browser_pb2.ScreenshotResponse(
            image=image,
            format=browser_pb2.IMAGE_FORMAT_JPEG if jpeg else browser_pb2.IMAGE_FORMAT_PNG,
        )

    async def Pdf(
        self, request: browser_pb2.PdfRequest, context: Context
    ) -> browser_pb2.PdfResponse:
        spec = await self._spec(request.page, [], context)
        document = await self._serve(
            operations.pdf(
                self._pool,
                spec,
                landscape=request.landscape,
                print_background=request.print_background,
            ),
            context,
        )
        return browser_pb2.PdfResponse(pdf=document)

    async def GetContent(
        self, request: browser_pb2.GetContentRequest, context: Context
    ) -> browser_pb2.GetContentResponse:
        spec = await self._spec(request.page, [], context)
        found = await self._serve(operations.content(self._pool, spec), context)
        return browser_pb2.GetContentResponse(
            html=found.html, text=found.text, final_url=found.final_url
        )

    async def Evaluate(
        self, request: browser_pb2.EvaluateRequest, context: Context
    ) -> browser_pb2.EvaluateResponse:
        violations: list[tuple[str, str]] = []
        if not request.function.strip():
            violations.append(("function", "function is required"))
        elif len(request.function) > MAX_FUNCTION:
            violations.append(("function", f"function must be at most {MAX_FUNCTION} characters"))
        args: Any = []
        if len(request.args_json) > MAX_ARGS_JSON:
            violations.append(("args_json", f"args_json must be at most {MAX_ARGS_JSON} bytes"))
        elif request.args_json:
            try:
                args = json.loads(request.args_json)
            except ValueError as exc:
                violations.append(("args_json", f"args_json is not JSON: {exc}"))
            else:
                if not isinstance(args, list):
                    violations.append(("args_json", "args_json must be a JSON array"))
        spec = await self._spec(request.page, violations, context)
        result = await self._serve(
            operations.evaluate(self._pool, spec, request.function, args), context
        )
        return browser_pb2.EvaluateResponse(result_json=result)

    async def GetPoolStats(
        self, request: browser_pb2.GetPoolStatsRequest, context: Context
    ) -> browser_pb2.GetPoolStatsResponse:
        stats = self._pool.stats()
        return browser_pb2.GetPoolStatsResponse(
            browsers=stats.browsers,
            pages_in_use=stats.pages_in_use,
            queue_length=stats.queue_length,
            recycles=stats.recycles,
            crashes=stats.crashes,
            memory_bytes=stats.memory_bytes,
        )

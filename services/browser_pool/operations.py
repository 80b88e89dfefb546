"""Screenshot, PDF, content and evaluate: open the page in a fresh context, then act on it."""

from __future__ import annotations

import asyncio
import enum
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import FloatRect, Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from sandmesh_runtime import deadlines, errors
from services.browser_pool.pool import Job, Pool

T = TypeVar("T")

# Answer this long before the caller's deadline so the answer still reaches it.
DEADLINE_MARGIN_S = 0.1
DEFAULT_VIEWPORT = (1280, 720)


class WaitFor(enum.Enum):
    LOAD = "load"
    NETWORK_IDLE = "networkidle"
    SELECTOR = "selector"


class PolicyDenied(errors.PermissionDenied):
    """The page, or a redirect it followed, is not allowed."""


class PageFailed(errors.FailedPrecondition):
    """The page could not be loaded or the operation failed inside it."""

    def __init__(self, message: str) -> None:
        super().__init__(f"page error: {message}")


@dataclass(frozen=True)
class PageSpec:
    url: str
    wait_for: WaitFor = WaitFor.LOAD
    selector: str = ""
    viewport: tuple[int, int] = DEFAULT_VIEWPORT
    user_agent: str = ""
    tenant: str = ""


@dataclass(frozen=True)
class Content:
    html: str
    text: str
    final_url: str


def _budget(pool: Pool) -> float:
    """Seconds this job may take: the pool's page timeout, clamped to the caller's time left."""
    left = deadlines.time_left()
    budget = pool.settings.page_timeout_s
    if left is not None:
        budget = min(budget, left - DEADLINE_MARGIN_S)
    if budget <= 0:
        raise errors.DeadlineExceeded("the caller's deadline has passed")
    return budget


async def _open(job: Job, spec: PageSpec, budget: float) -> Page:
    page = await job.context.new_page()
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.set_default_timeout(budget * 1000)
    page.set_default_navigation_timeout(budget * 1000)
    wait_until: Literal["load", "networkidle"] = (
        "networkidle" if spec.wait_for is WaitFor.NETWORK_IDLE else "load"
    )
    try:
        await page.goto(spec.url, wait_until=wait_until)
    except PlaywrightError:
        # The hop the proxy refused may be a redirect target, not the URL asked for.
        for url in [*reversed(failed), spec.url]:
            why = job.browser.denial(url)
            if why is not None:
                raise PolicyDenied(f"navigation denied by URL policy: {url}: {why}") from None
        raise
    if spec.wait_for is WaitFor.SELECTOR:
        await page.wait_for_selector(spec.selector)
    return page


async def _open_and(
    job: Job, spec: PageSpec, budget: float, action: Callable[[Page], Awaitable[T]]
) -> T:
    return await action(await _open(job, spec, budget))


async def _run(pool: Pool, spec: PageSpec, action: Callable[[Page], Awaitable[T]]) -> T:
    width, height = spec.viewport
    options: dict[str, Any] = {"viewport": {"width": width, "height": height}}
    if spec.user_agent:
        options["user_agent"] = spec.user_agent
    async with pool.job(**options) as job:
        budget = _budget(pool)  # after the queue: the wait has used some of the time
        try:
            async with asyncio.timeout(budget):
                return await pool.guarded(job.browser, _open_and(job, spec, budget, action))
        except (TimeoutError, PlaywrightTimeout):
            raise errors.DeadlineExceeded(
                f"the page did not finish within {budget:.1f} s"
            ) from None
        except PlaywrightError as exc:
            if job.browser.exited.is_set() or "closed" in exc.message:
                raise  # the pool tells a dead browser from a page error
            if "Target crashed" in exc.message:
                raise PageFailed(
                    "the page crashed or was killed (a page may use at most "
                    f"{pool.settings.max_page_memory_mb} MB of memory)"
                ) from None
            raise PageFailed(exc.message.splitlines()[0]) from None


async def screenshot(
    pool: Pool,
    spec: PageSpec,
    *,
    jpeg: bool,
    full_page: bool,
    clip: tuple[int, int, int, int] | None,
    quality: int | None,
) -> bytes:
    async def act(page: Page) -> bytes:
        region: FloatRect | None = None
        if clip is not None:
            x, y, w, h = clip
            region = {"x": x, "y": y, "width": w, "height": h}
        return await page.screenshot(
            type="jpeg" if jpeg else "png",
            full_page=full_page,
            clip=region,
            quality=quality if jpeg else None,
        )

    return await _run(pool, spec, act)


async def pdf(pool: Pool, spec: PageSpec, *, landscape: bool, print_background: bool) -> bytes:
    async def act(page: Page) -> bytes:
        return await page.pdf(landscape=landscape, print_background=print_background)

    return await _run(pool, spec, act)


async def content(pool: Pool, spec: PageSpec) -> Content:
    async def act(page: Page) -> Content:
        html = await page.content()
        text = await page.evaluate("() => document.body ? document.body.innerText : ''")
        return Content(html, str(text), page.url)

    return await _run(pool, spec, act)


async def evaluate(pool: Pool, spec: PageSpec, function: str, args: list[Any]) -> str:
    """Call `function` with `args` in the page; its value as JSON."""

    async def act(page: Page) -> str:
        # The function text is the caller's; it runs in the page, never in this process.
        value = await page.evaluate(f"(args) => ({function})(...args)", args)
        try:
            return json.dumps(value, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError):
            kind = "a non-finite number" if _has_non_finite(value) else type(value).__name__
            raise PageFailed(f"the function returned {kind}, which is not JSON") from None

    return await _run(pool, spec, act)


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    return False

"""Swagger UI (/docs) and GraphiQL (GET /graphql) in a real headless Chromium, against a real
`keel serve` process, with every request to another origin refused: both pages must render and
run a query from files Keel serves itself, under their Content-Security-Policy, with no
violation reported. Chromium comes from Debian (scripts/ensure-chromium.sh); the test fails,
never skips, when it cannot start. Every wait is bounded."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, Request, Response, Route, sync_playwright

from tests.e2e.test_served_process import Served, keel_served

CHROMIUM = "/usr/bin/chromium"
# Flags that keep Chromium from reaching out on its own (updates, sync, safe browsing, QUIC).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
WAIT_MS = 20_000  # the bound of every wait on the page
# Collects CSP violations the page reports; installed before any of the page's scripts runs.
_RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


@dataclass
class Browser:
    context: BrowserContext
    origin: str
    foreign: list[str] = field(default_factory=list)  # requests to another origin, refused


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with keel_served(tmp_path_factory.mktemp("browser"), {"KEEL_ENVIRONMENT": "development"}) as served:
        yield served


@pytest.fixture
def browser(served: Served, tmp_path: Path) -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Chromium is missing: run scripts/ensure-chromium.sh"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            timeout=WAIT_MS,
        )
        context.set_default_timeout(WAIT_MS)
        context.add_init_script(_RECORD_VIOLATIONS)
        opened = Browser(context, served.base_url)

        def only_keel(route: Route, request: Request) -> None:
            if request.url.startswith(served.base_url + "/"):
                route.continue_()
            else:
                opened.foreign.append(request.url)
                route.abort()

        context.route("**/*", only_keel)
        try:
            yield opened
        finally:
            context.close()


def _open(browser: Browser, path: str) -> tuple[Page, Response]:
    page = browser.context.pages[0] if browser.context.pages else browser.context.new_page()
    response = page.goto(browser.origin + path, wait_until="load")
    assert response is not None
    assert response.status == 200
    return page, response


def _assert_clean(browser: Browser, page: Page, response: Response) -> None:
    """Nothing was asked of another origin, and the page ran under a strict policy that it
    never broke."""
    assert browser.foreign == []
    csp = response.headers.get("content-security-policy", "")
    assert "default-src 'self'" in csp
    assert "script-src 'self';" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.evaluate("window.__violations") == []


def test_swagger_ui_authorizes_and_runs_a_request_offline(browser: Browser, served: Served) -> None:
    page, response = _open(browser, "/docs")
    page.locator(".swagger-ui .info .title").filter(has_text="Keel").wait_for()
    page.locator(".scheme-container button.authorize").click()
    dialog = page.locator(".dialog-ux .modal-ux")
    dialog.locator("input").fill(served.token)
    dialog.locator("button.authorize").click()
    dialog.locator("button.btn-done").click()
    operation = page.locator(".opblock-get").filter(
        has=page.locator('.opblock-summary-path[data-path="/v1/profiles"]')
    )
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status")
    status.filter(has_text="200").wait_for()
    body = operation.locator(".live-responses-table .response-col_description pre").first
    assert '"items"' in body.inner_text()
    # The request Swagger UI sent carried the key typed into Authorize.
    assert served.token in operation.locator(".curl-command").inner_text()
    _assert_clean(browser, page, response)
    # The violation check can fail: an inline script is refused, and reported.
    page.evaluate(
        """() => { const s = document.createElement("script");
                   s.textContent = "window.__inline = true"; document.body.append(s); }"""
    )
    page.wait_for_function("window.__violations.length > 0", timeout=WAIT_MS)
    assert page.evaluate("window.__inline === undefined")


def test_graphiql_runs_a_query_with_an_authorization_header_offline(browser: Browser, served: Served) -> None:
    page, response = _open(browser, "/graphql")
    page.locator(".graphiql-container .graphiql-query-editor .CodeMirror").wait_for()
    page.evaluate(
        """() => document.querySelector(".graphiql-query-editor .CodeMirror")
            .CodeMirror.setValue("{ viewer { keyId } }")"""
    )
    page.get_by_role("button", name="Headers").click()
    headers_editor = page.locator(".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror")
    headers_editor.wait_for()
    page.evaluate(
        """(token) => document.querySelector(
            ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror"
        ).CodeMirror.setValue(JSON.stringify({ Authorization: `Bearer ${token}` }))""",
        served.token,
    )
    page.locator("button.graphiql-execute-button").click()
    key_id = served.token.split("_")[1]
    page.locator(".graphiql-response").filter(has_text=key_id).wait_for()
    assert '"keyId"' in page.locator(".graphiql-response").inner_text()
    _assert_clean(browser, page, response)

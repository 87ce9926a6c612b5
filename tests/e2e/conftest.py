"""Browser tests: a real lab (tests/e2e/lab.py) and headless Chromium driven by Playwright.

The browser is the system's ``/usr/bin/chromium`` (``playwright install`` is never run). Without it the
tests skip, or fail when ``LATENTLAB_REQUIRE_BROWSER=1`` (CI).
"""

from __future__ import annotations

import pytest

from tests.e2e.lab import CHROMIUM_ARGS, PASSWORDS, chromium_or_skip, copy_logs, running_lab

# collected by an init script in every page: Content-Security-Policy violations
WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


@pytest.fixture(scope="session")
def chromium_path():
    return chromium_or_skip()


@pytest.fixture(scope="package")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="package")
def lab(chromium_path, redis_server, tmp_path_factory):
    """One lab for every browser test (its dataset and map take a minute to make through the real jobs);
    tests leave it usable for the next (they add generations, never remove what others rely on). Package
    scope: its worker stops after the last browser test, so it never takes another tier's jobs from the
    session's Redis."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    root = tmp_path_factory.mktemp("e2e-lab")
    with running_lab(root, redis_server.url) as running:
        yield running
        copy_logs(running, "e2e")


class Session:
    """A signed-in browser context: its page, and the errors the page raised."""

    def __init__(self, browser, lab, username: str):
        self.lab = lab
        self.username = username
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.context.add_init_script(WATCH_CSP)
        self.context.set_default_timeout(30_000)
        self.page_errors: list[str] = []
        self.page = self.new_page()
        self.login()

    def new_page(self):
        page = self.context.new_page()
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        return page

    def login(self) -> None:
        page = self.page
        page.goto(f"{self.lab.url}/login")
        page.fill("input[name=username]", self.username)
        page.fill("input[name=password]", PASSWORDS[self.username])
        page.click("button[type=submit]")
        page.wait_for_url(f"{self.lab.url}/")

    def goto(self, path: str):
        self.page.goto(f"{self.lab.url}{path}")
        return self.page

    def csp_violations(self) -> list[str]:
        return self.page.evaluate("window.__cspViolations || []")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def signed_in(browser, lab):
    opened: list[Session] = []

    def sign_in(username: str = "alice") -> Session:
        session = Session(browser, lab, username)
        opened.append(session)
        return session

    yield sign_in
    for session in opened:
        session.close()

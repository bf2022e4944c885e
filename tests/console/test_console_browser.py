"""The console in a real browser (Debian's chromium, headless), against a real gateway: log in,
make an org and a key, call the API with it, find the call in the request log and the usage
chart, rotate and revoke the key, read it all in the audit log, and deliver a webhook ping.
Screenshots of every page are kept."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Dialog, async_playwright, expect

from tests.conftest import GatewayFactory, RunningGateway, Upstream, make_config
from tests.helpers import eventually

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on the PATH (apt-get install chromium)"
)

ALICE = "alice-token-0123456789abcdef"


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the screenshots go: $CONSOLE_SCREENSHOTS, or the test's own directory."""
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {folder}")
    return folder


@pytest.fixture
async def gw(gateway_factory: GatewayFactory) -> RunningGateway:
    return await gateway_factory(
        make_config(
            {"echo": {"builtin": "echo"}},
            [
                {
                    "path": "/v1/echo/{rest:.*}",
                    "name": "/v1/echo/*",
                    "upstream": "echo",
                    "auth": "key",
                    "scopes": ["read"],
                }
            ],
            admin={"tokens": [{"name": "alice", "token": ALICE}]},
            plans={"free": {"rate_limit": {"requests": 60, "per": "1m", "burst": 10}}},
            webhooks={"allow_private_targets": True},
        )
    )


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        launched = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield launched
        finally:
            await launched.close()


async def test_an_operator_manages_an_org_and_its_key_and_watches_its_traffic(
    gw: RunningGateway, browser: Browser, shots: Path, upstream: Upstream
) -> None:
    expect.set_options(timeout=10_000)  # a busy 2-core CI machine is slower than a laptop
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gw.admin_url)
    page = await context.new_page()
    problems: list[str] = []  # script errors and CSP refusals: none are expected
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)

    async def confirm(dialog: Dialog) -> None:
        await dialog.accept()

    pages: list[str] = []  # every page as shown, to look for secrets in

    async def shot(name: str) -> None:
        await page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        pages.append(await page.content())

    async def call_api(secret: str) -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{gw.url}/v1/echo/hi",
                headers={"Authorization": f"Bearer {secret}", "User-Agent": "console-test"},
            ) as r,
        ):
            return r.status

    try:
        # Log in through the form.
        await page.goto(f"{gw.admin_url}/")
        await expect(page).to_have_url(f"{gw.admin_url}/login")
        await shot("01-login")
        await page.get_by_label("Admin token").fill("wrong-token-0123456789")
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_role("alert")).to_contain_text("not valid")
        await page.get_by_label("Admin token").fill(ALICE)
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_role("heading", name="Orgs", level=1)).to_be_visible()
        await expect(page.locator(".who")).to_contain_text("alice")
        problems.clear()  # the refused login's 401 was meant
        (cookie,) = await context.cookies()
        assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"]) == (True, "Strict", False)

        # An org, made in the console.
        await page.get_by_label("Slug").fill("acme")
        await page.get_by_label("Name").fill("Acme Pumps")
        await page.get_by_label("Plan").select_option("free")
        await page.get_by_role("button", name="Create org").click()
        await expect(page.get_by_role("heading", name="Acme Pumps", level=1)).to_be_visible()

        # A key: its secret shown once, with a Copy button.
        await page.get_by_label("Name").fill("Zapier sync")
        await page.get_by_label("Scopes").fill("read")
        await page.get_by_label("Environment").select_option("live")
        await page.get_by_role("button", name="Create key").click()
        secret_box = page.locator(".secret-value")
        await expect(secret_box).to_be_visible()
        secret = (await secret_box.text_content() or "").strip()
        assert secret.startswith("fw_live_")
        await page.get_by_role("button", name="Copy").click()
        await expect(page.locator(".copy-status")).to_contain_text(re.compile("Copied|Selected"))
        if "Copied" in (await page.locator(".copy-status").text_content() or ""):
            assert await page.evaluate("navigator.clipboard.readText()") == secret
        await shot("02-org-with-new-key")
        await page.reload()
        await expect(page.get_by_role("cell", name="Zapier sync", exact=True)).to_be_visible()
        assert secret not in await page.content()  # never shown again

        # The request log, tailing live; then the API is called with the new key.
        await (
            page.get_by_role("navigation", name="This org")
            .get_by_role("link", name="Request log")
            .click()
        )
        await expect(page.get_by_role("heading", name="Request log", level=1)).to_be_visible()
        await page.get_by_label("Live tail").check()
        assert await call_api(secret) == 200
        await expect(page.get_by_role("cell", name="/v1/echo/hi")).to_be_visible(timeout=8000)
        row = page.get_by_role("row").filter(has_text="/v1/echo/hi")
        await expect(row).to_contain_text("200")
        await shot("03-request-log")
        await page.get_by_label("Live tail").uncheck()

        # Usage: the call is counted.
        await page.goto(f"{gw.admin_url}/#/orgs/acme/usage")
        await expect(page.get_by_role("heading", name="Usage of Acme Pumps")).to_be_visible()
        chart = page.get_by_role("img", name="Requests per minute for acme")
        await expect(chart).to_be_visible()
        assert ": 1 request in 60 minute buckets" in (await chart.get_attribute("aria-label") or "")
        await shot("04-usage")
        await page.get_by_text("The numbers as a table").click()
        counted = await page.locator(".usage table tbody tr td:nth-child(2)").all_text_contents()
        assert sum(int(n) for n in counted) == 1  # the table tells the chart's numbers

        # Rotate with a grace: a new secret, shown once; both keys work meanwhile.
        await page.goto(f"{gw.admin_url}/#/orgs/acme")
        await page.get_by_label("How long the old key works").select_option("24h")
        page.once("dialog", confirm)
        await page.get_by_role("button", name="Rotate").click()
        await expect(page.get_by_role("heading", name="New secret for Zapier sync")).to_be_visible()
        new_secret = (await page.locator(".secret-value").text_content() or "").strip()
        assert new_secret.startswith("fw_live_")
        assert new_secret != secret
        assert await call_api(new_secret) == 200
        assert await call_api(secret) == 200
        await shot("05-org-rotated")
        assert await page.evaluate("document.documentElement.scrollWidth") <= 1280  # no page scroll

        # Revoke the old key, after a confirmation: the API refuses it.
        old_row = page.get_by_role("row").filter(has_text="rotated")
        page.once("dialog", confirm)
        await old_row.get_by_role("button", name="Revoke").click()
        await expect(page.get_by_role("cell", name="revoked", exact=True)).to_be_visible()
        await eventually(lambda: call_api(secret), expect=401)
        assert await call_api(new_secret) == 200

        # The audit log names who did what.
        await page.get_by_role("link", name="Audit log", exact=True).first.click()
        await expect(page.get_by_role("heading", name="Audit log", level=1)).to_be_visible()
        for action in ("org.create", "key.create", "key.rotate", "key.revoke"):
            entry = page.get_by_role("row").filter(has_text=action)
            await expect(entry).to_contain_text("alice")
        await shot("06-audit")

        # Webhooks: an endpoint (its secret shown once), a ping, its delivery retried.
        await page.goto(f"{gw.admin_url}/#/orgs/acme/webhooks")
        await page.get_by_label("URL").fill(f"{upstream.url}/hooks")
        await page.get_by_label("Events").fill("invoice.created")
        await page.get_by_role("button", name="Add endpoint").click()
        await expect(page.locator(".secret-value")).to_contain_text("whsec_")
        await shot("07-webhooks")
        await page.get_by_role("link", name="Deliveries").click()
        await page.get_by_role("button", name="Send a ping").click()
        await expect(page.get_by_role("cell", name="webhook.ping")).to_be_visible()

        async def delivered() -> int:
            await page.get_by_role("button", name="Refresh").click()
            return await page.get_by_role("cell", name="succeeded").count()

        await eventually(delivered)
        await page.get_by_role("button", name="Retry").first.click()
        await expect(page.get_by_role("status")).to_contain_text("due now")
        await shot("08-deliveries")

        # Older pages of the request log, by cursor.
        await page.goto(f"{gw.admin_url}/#/requests?org=acme&limit=2")
        await expect(page.get_by_text("Requests, newest first (2 shown)")).to_be_visible()
        await page.get_by_role("button", name="Older").click()
        await expect(page.get_by_text("Requests, newest first (4 shown)")).to_be_visible()

        # On a phone: the request log still reads (its table scrolls sideways).
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.goto(f"{gw.admin_url}/#/requests?org=acme")
        await expect(page.get_by_role("cell", name="/v1/echo/hi").first).to_be_visible()
        await shot("09-phone-request-log")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width}px wide on a 390px screen"

        # Log out: the session is over, on the server too.
        await page.set_viewport_size({"width": 1280, "height": 900})
        await page.get_by_role("button", name="Log out").click()
        await expect(page).to_have_url(f"{gw.admin_url}/login")
        await page.goto(f"{gw.admin_url}/")
        await expect(page).to_have_url(f"{gw.admin_url}/login")
    except BaseException:
        await shot("failure")  # what the page showed when the test gave up
        (shots / "failure.html").write_text(await page.content())
        raise
    await context.close()
    assert problems == [], problems
    for shown in pages:  # neither the admin token nor the session id, ever
        assert ALICE not in shown
        assert cookie["value"] not in shown

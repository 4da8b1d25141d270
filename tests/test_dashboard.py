"""The analytics dashboard (`GET /dashboard`) in a real browser: Debian's chromium, driven by Playwright.

The page is signed in to through its form, and what it shows is read back from the DOM (the data attributes
the page sets for this, and the text a person sees) and compared with what the API answers. Chromium is
never downloaded (`playwright install` is not used): without /usr/bin/chromium these tests skip, or fail
with CI=true (scripts/test installs it on CI).
"""

from __future__ import annotations

import datetime as dt
import http.client
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import unavailable
from domain.helpers import genesys_id, inbound, ok, record_message, transition, wa_id
from harness import Api, Server, TcpProxy, Tenant, eventually

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BUSINESS_NUMBER = "bn-dashboard"
AGENT = "agent-ana"
# How long the page may take to show an event made through the API.
FEED_TIMEOUT_MS = 5000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        unavailable("chromium", f"{CHROMIUM} is missing (Debian package chromium; scripts/test installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright", "the Python package playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


class Page:
    """A browser tab on the dashboard, failing the test on any script error or error in the console."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.context = browser.new_context(
            locale="en-US", timezone_id="UTC", viewport={"width": 1360, "height": 1000}
        )
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.expected_statuses: set[int] = set()  # failed requests the test caused on purpose
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.page.on("console", self._console)
        self.base_url = base_url
        self.page.goto(f"{base_url}/dashboard")

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        failed = re.match(r"Failed to load resource: .* status of (\d+)", message.text)
        if failed and int(failed.group(1)) in self.expected_statuses:
            return
        self.errors.append(message.text)

    def sign_in(self, key: str, tenant: str = "") -> None:
        page = self.page
        page.fill("#api-key", key)
        page.fill("#tenant-id", tenant)
        page.click("#sign-in-button")
        page.wait_for_selector("body[data-analytics=loaded]", timeout=15000)

    def wait_live(self) -> None:
        self.page.wait_for_selector("#connection[data-state=live]", timeout=10000)

    def kpi(self, name: str) -> tuple[str | None, str]:
        tile = self.page.locator(f'[data-kpi="{name}"]')
        return tile.get_attribute("data-value"), tile.locator("dd").inner_text()

    def bars(self, chart: str, series: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for bar in self.page.locator(f"#{chart} rect[data-series={series}]").all():
            found[bar.get_attribute("data-period") or ""] = float(bar.get_attribute("data-value") or "nan")
        return found

    def feed_item(self, seq: int) -> Any:
        item = self.page.locator(f'#feed li[data-seq="{seq}"]')
        item.wait_for(timeout=FEED_TIMEOUT_MS)
        return item

    def feed_seqs(self) -> list[str]:
        """The feed's event numbers, top to bottom."""
        seqs: list[str] = self.page.locator("#feed li").evaluate_all("items => items.map(i => i.dataset.seq)")
        return seqs

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    pages: list[Page] = []

    def open_(base_url: str) -> Page:
        page = Page(browser, base_url)
        pages.append(page)
        return page

    yield open_
    for page in pages:
        page.close()
    for page in pages:
        assert not page.errors, page.errors


def tenant_client(api: Api, tenant: Tenant) -> httpx.Client:
    return httpx.Client(base_url=api.base_url, headers=tenant.headers, timeout=30)


def some_activity(client: httpx.Client) -> tuple[str, str]:
    """Two customers write in; an agent joins the first conversation and replies twice. Returns the two
    conversations' IDs (the second is still pending)."""
    first_customer = wa_id()
    first = inbound(client, first_customer, BUSINESS_NUMBER)
    inbound(client, first_customer, BUSINESS_NUMBER, text="are you there?")
    second = inbound(client, wa_id(), BUSINESS_NUMBER)
    conversation = first["conversation_id"]
    ok(
        client.post(
            f"/v1/conversations/{conversation}/participants",
            json={"role": "agent", "participant_ref": AGENT, "display_name": "Ana"},
        ),
        201,
    )
    assert transition(client, conversation, "active", "agent joined").status_code == 200
    for text in ("Hello, how can I help?", "Anything else?"):
        record_message(
            client,
            conversation,
            sender_type="agent",
            sender_id=AGENT,
            text=text,
            genesys_message_id=genesys_id(),
        )
    return conversation, second["conversation_id"]


def last_event_seq(client: httpx.Client, conversation_id: str, event_type: str) -> int:
    """The number of the conversation's latest event of this type (events are numbered just after their
    transaction commits, so it is waited for)."""

    def latest() -> int | None:
        params = {"conversation_id": conversation_id, "types": event_type, "limit": 1000}
        events = ok(client.get("/v1/events", params=params))["events"]
        return events[-1]["seq"] if events else None

    seq: int = eventually(latest, timeout=10)
    return seq


def week_query() -> dict[str, str]:
    """What the page asks for by default: the last 7 days by day."""
    now = dt.datetime.now(dt.UTC)
    return {"from": (now - dt.timedelta(days=7)).isoformat(), "to": now.isoformat(), "granularity": "day"}


def test_dashboard_shows_the_tenants_kpis_and_its_live_feed(api: Api, open_page: Any, tmp_path: Path) -> None:
    tenant = api.new_tenant("Dashboard tenant")
    with tenant_client(api, tenant) as client:
        active, pending = some_activity(client)
        window = week_query()
        conversations = ok(client.get("/v1/analytics/conversations", params=window))
        messages = ok(client.get("/v1/analytics/messages", params=window))
        assert conversations["totals"]["started"] == 2, conversations["totals"]
        assert messages["totals"]["inbound"] == 3, messages["totals"]
        assert messages["totals"]["outbound"] == 2, messages["totals"]

        tab = open_page(api.base_url)
        page = tab.page
        # A wrong key is refused in the form, and nothing of the dashboard shows.
        tab.expected_statuses.add(401)
        page.fill("#api-key", "smk_not-a-key")
        page.click("#sign-in-button")
        page.wait_for_selector("#sign-in-error:has-text('The key was refused')")
        assert page.locator("#dashboard").is_hidden()

        tab.sign_in(tenant.key)
        tab.wait_live()
        assert page.locator("#connection").inner_text() == "live"
        assert tenant.id in page.locator("#tenant-label").inner_text()
        # The key is in the tab's session storage, and nowhere more lasting.
        assert page.evaluate("Object.keys(localStorage).length") == 0
        assert tenant.key in page.evaluate("JSON.stringify(sessionStorage)")

        # KPI tiles: the exact figures of the API.
        assert tab.kpi("conversations.started") == ("2", "2")
        assert tab.kpi("messages.inbound") == ("3", "3")
        assert tab.kpi("messages.outbound") == ("2", "2")
        assert tab.kpi("now.open") == (str(conversations["now"]["open"]), str(conversations["now"]["open"]))
        assert conversations["now"]["open"] == 2
        first_response = conversations["totals"]["first_response_avg_seconds"]
        assert first_response is not None
        assert tab.kpi("conversations.first_response_avg_seconds")[0] == str_number(first_response)

        # The started-conversations chart: one bar per period of the API's series, same values.
        expected_bars = {
            point["period"]: float(point["started"])
            for point in conversations["series"]
            if point["started"] is not None
        }
        shown = tab.bars("chart-started", "started")
        assert {p: v for p, v in shown.items() if v} == {p: v for p, v in expected_bars.items() if v}
        assert sum(shown.values()) == 2
        tooltip = page.locator("#chart-started rect[data-series=started][data-value='2'] title")
        assert re.match(r"Started · .+: 2$", tooltip.text_content() or "")
        assert sum(tab.bars("chart-messages", "inbound").values()) == 3

        # The agents table names the agent who replied.
        agent_row = page.locator(f'#agents-table tr[data-agent="{AGENT}"]')
        assert agent_row.count() == 1

        # A state change made through the API while the page is open shows at the top of the feed.
        assert transition(client, pending, "waiting", "queued for an agent").status_code == 200
        seq = last_event_seq(client, pending, "conversation.state_changed")
        item = tab.feed_item(seq)
        text = item.inner_text()
        assert f"#{seq}" in text
        assert "conversation.state_changed" in text
        assert "pending → waiting" in text
        assert pending in text
        assert page.locator("#feed li").first.get_attribute("data-seq") == str(seq)
        # The earlier events of the tenant were replayed under it, newest first.
        shown_seqs = [int(s) for s in tab.feed_seqs()]
        assert shown_seqs == sorted(shown_seqs, reverse=True)
        assert last_event_seq(client, active, "conversation.state_changed") in shown_seqs

        page.screenshot(path=str(tmp_path / f"dashboard-{api.backend}.png"), full_page=True)


def str_number(value: float) -> str:
    """A number as JavaScript's String() writes it (2.0 -> "2")."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def test_the_feed_reconnects_after_a_drop_and_misses_nothing(
    sqlite_server: Server, open_page: Any, tmp_path: Path
) -> None:
    """Through a relay that cuts every connection: the indicator says disconnected, the page connects again
    with `after=` the last number it saw, and an event made while it was away still shows. Signed in with the
    admin key and a tenant ID (the WebSocket's `?tenant=`)."""
    with httpx.Client(base_url=sqlite_server.base_url, timeout=30) as http:
        api = Api(sqlite_server, http)
        tenant = api.new_tenant("Reconnecting tenant")
        proxy = TcpProxy("127.0.0.1", sqlite_server.process.port)
        try:
            with tenant_client(api, tenant) as client:
                started = inbound(client, wa_id(), BUSINESS_NUMBER)
                conversation = started["conversation_id"]
                tab = open_page(f"http://127.0.0.1:{proxy.port}")
                tab.sign_in(sqlite_server.admin_key, tenant.id)
                tab.wait_live()
                assert tenant.id in tab.page.locator("#tenant-label").inner_text()
                assert tab.kpi("conversations.started")[0] == "1"

                proxy.refusing = True
                proxy.cut()
                tab.page.wait_for_selector("#connection[data-state=disconnected]", timeout=5000)
                moved = transition(client, conversation, "active", "while the page was away")
                assert moved.status_code == 200
                seq = last_event_seq(client, conversation, "conversation.state_changed")
                time.sleep(0.5)
                proxy.refusing = False

                tab.wait_live()
                assert "pending → active" in tab.feed_item(seq).inner_text()
                # Each event once, however many times the page connected.
                seqs = tab.feed_seqs()
                assert len(seqs) == len(set(seqs))
                tab.page.screenshot(path=str(tmp_path / "dashboard-reconnected.png"), full_page=True)
        finally:
            proxy.close()


def raw_get(server: Server, path: str) -> http.client.HTTPResponse:
    """A GET sent as written: http.client does not resolve `..` or decode `%2F` as httpx would."""
    connection = http.client.HTTPConnection("127.0.0.1", server.process.port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_the_page_and_its_files_are_served_with_a_strict_policy(sqlite_server: Server) -> None:
    with httpx.Client(base_url=sqlite_server.base_url, timeout=10) as http:
        page = http.get("/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        directives = {
            name: value for name, _, value in (part.strip().partition(" ") for part in policy.split(";"))
        }
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert directives["connect-src"].startswith("'self'")
        assert "unsafe" not in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        # No inline script: every <script> loads a file of this origin.
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, flags=re.S)
        assert scripts
        for attributes, body in scripts:
            assert 'src="/dashboard/static/' in attributes
            assert not body.strip()
        assert "style=" not in page.text

        script = http.get("/dashboard/static/dashboard.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        style = http.get("/dashboard/static/dashboard.css")
        assert style.status_code == 200
        assert style.headers["content-type"].startswith("text/css")
        assert http.get("/dashboard/static/nothing.js").status_code == 404

    for path in (
        "/dashboard/static/../routes.py",
        "/dashboard/static/../../app.py",
        "/dashboard/static/..%2Froutes.py",
        "/dashboard/static/%2e%2e%2froutes.py",
        "/dashboard/static/%2e%2e/routes.py",
        "/dashboard/static/routes.py",
        "/dashboard/static/__init__.py",
        "/dashboard/static/index.html",
        "/dashboard/static/",
        "/dashboard/static/" + urllib.parse.quote("/etc/passwd", safe=""),
    ):
        assert raw_get(sqlite_server, path).status == 404, path

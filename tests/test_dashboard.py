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
from domain.helpers import inbound, ok, record_message, transition, wa_id, wamid
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
        self.expect_socket_failures = False  # connections the test refuses on purpose
        self.sockets: list[str] = []  # the URL of each WebSocket the page opened
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.page.on("console", self._console)
        self.page.on("websocket", lambda socket: self.sockets.append(socket.url))
        self.base_url = base_url
        self.page.goto(f"{base_url}/dashboard")

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        failed = re.match(r"Failed to load resource: .* status of (\d+)", message.text)
        if failed and int(failed.group(1)) in self.expected_statuses:
            return
        if self.expect_socket_failures and re.match(r"WebSocket connection to .* failed", message.text):
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

    def tiles(self) -> dict[str, tuple[str, str]]:
        """Each KPI tile's data-value and the text shown."""
        found: list[list[str]] = self.page.locator("[data-kpi]").evaluate_all(
            "tiles => tiles.map(t => [t.dataset.kpi, t.dataset.value, t.querySelector('dd').innerText])"
        )
        return {kpi: (value, text) for kpi, value, text in found}

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
    """An afternoon's work, starting an hour ago: two customers write in; an agent joins the first
    conversation and answers 90 s after its first message (one answer delivered and read, the second
    failed with code 131047). Returns the two conversations' IDs (the second is still pending)."""
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)

    def at(seconds: int) -> str:
        return (start + dt.timedelta(seconds=seconds)).isoformat()

    first_customer = wa_id()
    first = inbound(client, first_customer, BUSINESS_NUMBER, occurred_at=at(0))
    inbound(client, first_customer, BUSINESS_NUMBER, text="are you there?", occurred_at=at(30))
    second = inbound(client, wa_id(), BUSINESS_NUMBER, occurred_at=at(60))
    conversation = first["conversation_id"]
    ok(
        client.post(
            f"/v1/conversations/{conversation}/participants",
            json={"role": "agent", "participant_ref": AGENT, "display_name": "Ana", "joined_at": at(80)},
        ),
        201,
    )
    assert transition(client, conversation, "active", "agent joined").status_code == 200
    answers = [wamid(), wamid()]
    for seconds, text, answer in zip(
        (90, 150), ("Hello, how can I help?", "Anything else?"), answers, strict=True
    ):
        record_message(
            client,
            conversation,
            sender_type="agent",
            sender_id=AGENT,
            text=text,
            wamid=answer,
            occurred_at=at(seconds),
        )
    receipts = [
        {"wamid": answers[0], "status": "delivered", "at": at(95)},
        {"wamid": answers[0], "status": "read", "at": at(120)},
        {
            "wamid": answers[1],
            "status": "failed",
            "at": at(155),
            "error": {"code": "131047", "title": "Re-engagement message"},
        },
    ]
    ok(client.post("/v1/receipts", json={"receipts": receipts}))
    return conversation, second["conversation_id"]


REPORTS = ("conversations", "messages", "customers", "agents")


def reports(client: httpx.Client, **params: str) -> dict[str, Any]:
    """The four analytics reports over the last 7 days by day (what the page asks for first), once every
    change made so far is counted in them."""
    now = dt.datetime.now(dt.UTC)
    query = {"from": (now - dt.timedelta(days=7)).isoformat(), "to": now.isoformat(), "granularity": "day"}
    query |= params

    def complete() -> dict[str, Any] | None:
        found = {part: ok(client.get(f"/v1/analytics/{part}", params=query)) for part in REPORTS}
        return found if all(report["freshness"]["complete"] for report in found.values()) else None

    answer: dict[str, Any] = eventually(complete, timeout=15)
    return answer


def tile_value(found: dict[str, Any], kpi: str) -> Any:
    """What the API says for a KPI tile (`report.metric`, or `now.state`)."""
    part, metric = kpi.split(".")
    if part == "now":
        return found["conversations"]["now"][metric]
    return found[part]["totals"][metric]


def js_string(value: Any) -> str:
    """A number as the page writes it into data-value (JavaScript's String(); null as "")."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def last_event_seq(client: httpx.Client, conversation_id: str, event_type: str) -> int:
    """The number of the conversation's latest event of this type (events are numbered just after their
    transaction commits, so it is waited for)."""

    def latest() -> int | None:
        params = {"conversation_id": conversation_id, "types": event_type, "limit": 1000}
        events = ok(client.get("/v1/events", params=params))["events"]
        return events[-1]["seq"] if events else None

    seq: int = eventually(latest, timeout=10)
    return seq


def test_dashboard_shows_the_tenants_kpis_and_its_live_feed(api: Api, open_page: Any, tmp_path: Path) -> None:
    tenant = api.new_tenant("Dashboard tenant")
    with tenant_client(api, tenant) as client:
        active, pending = some_activity(client)
        found = reports(client)
        assert found["conversations"]["totals"]["started"] == 2
        assert found["conversations"]["totals"]["first_response_avg_seconds"] == 90
        assert found["conversations"]["now"]["open"] == 2
        assert found["messages"]["totals"]["inbound"] == 3
        assert found["messages"]["totals"]["outbound"] == 2
        assert found["messages"]["failure_codes"] == [{"code": "131047", "count": 1}]

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

        # Every KPI tile holds the API's exact figure, written for people.
        tiles = tab.tiles()
        assert len(tiles) >= 20
        assert {kpi: value for kpi, (value, _) in tiles.items()} == {
            kpi: js_string(tile_value(found, kpi)) for kpi in tiles
        }
        assert tiles["conversations.started"] == ("2", "2")
        assert tiles["messages.inbound"] == ("3", "3")
        assert tiles["now.open"] == ("2", "2")
        assert tiles["conversations.first_response_avg_seconds"] == ("90", "1m 30s")
        assert tiles["messages.failed_rate"] == ("0.5", "50%")
        assert tiles["conversations.resolution_avg_seconds"] == ("", "—")  # nothing resolved yet

        # The started-conversations chart: a bar per period of the API's series, with its value.
        series = found["conversations"]["series"]
        shown = tab.bars("chart-started", "started")
        assert shown == {point["period"]: float(point["started"]) for point in series}
        assert sum(shown.values()) == 2
        tooltip = page.locator("#chart-started rect[data-series=started][data-value='2'] title")
        assert re.match(r"Started · .+: 2$", tooltip.text_content() or "")
        assert sum(tab.bars("chart-messages", "inbound").values()) == 3
        hours = tab.bars("chart-hours", "inbound")
        assert hours == {
            str(row["hour"]): float(row["inbound"]) for row in found["customers"]["busiest_hours"]
        }
        assert sum(hours.values()) == 3
        # The failure-code table.
        failure = page.locator('#failures-table tr[data-code="131047"]')
        assert failure.locator("td").all_inner_texts() == ["131047", "1"]

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

        # The filters reach the API: another business number has nothing; this one has everything.
        page.fill("#business-number", "bn-nobody")
        page.click("#apply")
        page.wait_for_selector("body[data-analytics=loaded]")
        assert tab.tiles()["conversations.started"] == ("0", "0")
        page.fill("#business-number", BUSINESS_NUMBER)
        page.click("#apply")
        page.wait_for_selector("body[data-analytics=loaded]")
        assert tab.tiles()["conversations.started"] == ("2", "2")
        # The last 24 hours go by hour: the bars are the API's hourly series.
        page.select_option("#range", "24h")
        page.wait_for_selector("body[data-analytics=loaded]")
        assert page.locator("#granularity").input_value() == "hour"
        hourly = tab.bars("chart-started", "started")
        assert len(hourly) >= 24
        assert sum(hourly.values()) == 2


def test_the_feed_reconnects_after_a_drop_and_misses_nothing(
    sqlite_server: Server, open_page: Any, tmp_path: Path
) -> None:
    """Through a relay that cuts every connection and refuses new ones for a while: the indicator says
    disconnected, the page tries again (backing off) until it connects, with `after=` the last number it saw,
    and an event made while it was away shows. Signed in with the admin key and a tenant ID (the WebSocket's
    `?tenant=`)."""
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
                assert tab.tiles()["conversations.started"][0] == "1"

                seen = max(int(seq) for seq in tab.feed_seqs())
                first_socket = query_of(tab.sockets[0])
                assert first_socket["tenant"] == tenant.id
                assert first_socket["api_key"] == sqlite_server.admin_key

                tab.expect_socket_failures = True
                proxy.refusing = True
                cut_at = time.monotonic()
                proxy.cut()
                tab.page.wait_for_selector("#connection[data-state=disconnected]", timeout=5000)
                moved = transition(client, conversation, "active", "while the page was away")
                assert moved.status_code == 200
                seq = last_event_seq(client, conversation, "conversation.state_changed")
                time.sleep(max(0.0, cut_at + 2.5 - time.monotonic()))  # the first retry (after ~1 s) fails
                proxy.refusing = False

                tab.wait_live()
                assert len(tab.sockets) >= 3, tab.sockets
                assert query_of(tab.sockets[-1])["after"] == str(seen)
                assert "pending → active" in tab.feed_item(seq).inner_text()
                # Each event once, however many times the page connected.
                seqs = tab.feed_seqs()
                assert len(seqs) == len(set(seqs))
                tab.page.screenshot(path=str(tmp_path / "dashboard-reconnected.png"), full_page=True)
        finally:
            proxy.close()


def query_of(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


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

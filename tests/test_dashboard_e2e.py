"""The dashboard at / in headless Chromium (Debian's chromium and chromium-driver, driven by
selenium), on a service of its own started by the test: the engine shows as starting while it
loads, then up; live charts fill with non-zero figures under load; a page opened after the load
shows it from the history before any new request; a killed engine shows as restarting, a stopped
one as down. Screenshots land in test-output/ (docs/ holds copies)."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.browser_pages import page_port, page_server, try_from_page
from tests.conftest import OUTPUT_DIR, Deployment, has_gpu, is_healthy, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1150",
]
CLIENTS = 6
# A loaded 2-core machine has been seen to take over 5 minutes to start vLLM.
ENGINE_START_S = 600
ALLOWED_PAGE = page_port()


@pytest.fixture(scope="module")
def fresh_service(model_dir):
    """The whole service, started for this module and not waited for: its engine is still loading."""
    # A page on ALLOWED_PAGE's origin may call its API (test_a_page_on_an_allowed_origin_is_served).
    deployment = Deployment("dashboard", server={"cors": {"allowed_origins": [f"http://127.0.0.1:{ALLOWED_PAGE}"]}})
    deployment.start("-m", "common.service", log="service")
    try:
        yield deployment
    finally:
        deployment.close()


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromium-driver are missing: run `bash setup.sh --test`")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Load:
    """Clients that keep sending generations, some streamed, until the block ends."""

    def __init__(self, url: str, clients: int):
        self.url = url
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(clients)]
        self.errors: list[str] = []

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def client(self, index: int) -> None:
        body = {"prompt": f"dashboard load from client {index}", "max_tokens": 64, "ignore_eos": True}
        path = "/generate?streaming=true" if index % 2 else "/generate"
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                response = http.post(path, json=body)
                if response.status_code != 200:
                    self.errors.append(f"{response.status_code}: {response.text[:200]}")


def latest(browser, chart: str, series: str) -> float | None:
    """The last value the page charted for one series, as its legend holds it."""
    item = browser.find_element(By.CSS_SELECTOR, f'[data-chart="{chart}"] [data-series="{series}"]')
    value = item.get_attribute("data-value")
    return float(value) if value else None


def badges(browser, what: str = "dataset.state") -> list[str]:
    """The engine badges' states (or texts), by rank; read in one go, as the page replaces them."""
    return browser.execute_script(f"return [...document.querySelectorAll('#engines .pill')].map((b) => b.{what});")


def tenant_cells(browser) -> dict[str, list[str]]:
    """The tenant table's cells after the tenant's name, by tenant, read in one go."""
    rows = browser.execute_script("return [...document.querySelectorAll('#tenants tbody tr')]"
                                  ".map((row) => [...row.cells].map((cell) => cell.textContent));")
    return {row[0]: row[1:] for row in rows}


def stats(url: str, **params) -> dict | None:
    try:
        response = httpx.get(url + "/stats", params=params, timeout=10)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def engine_state(url: str) -> str | None:
    answer = stats(url)
    return answer["engines"][0]["state"] if answer else None


def engine_pid(deployment: Deployment) -> int:
    try:
        return deployment.pid("engine-0")
    except ValueError:  # not spawned yet
        return 0


def stop_group(pid: int) -> bool:
    """SIGSTOP the process group `pid` leads; False while supervisord's child has not yet made it (its
    pid is known from the fork, its group only once the child calls setpgrp)."""
    try:
        os.killpg(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    return True


def assert_clean_console(browser) -> None:
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


@pytest.mark.timeout(1200)  # it waits out the engine's start
def test_the_engine_shows_as_starting_while_it_loads_then_up(fresh_service, browser):
    # Hold the engine worker (and anything it started) still, so that the page is surely opened
    # while the engine loads, however fast this machine is; supervisord sees it STARTING.
    pid = wait_for(lambda: engine_pid(fresh_service), 60, 0.05, "supervisord to start the engine")
    wait_for(lambda: stop_group(pid), 10, 0.01, "the engine worker's process group")
    try:
        # Each frontend directly: asking nginx before they listen only fills its error log.
        for i in range(fresh_service.server["frontends"]):
            wait_for(lambda: stats(fresh_service.frontend_url(i)), 300, 0.5, f"frontend {i} to answer /stats")
        # nginx starts once every frontend listens.
        wait_for(lambda: stats(fresh_service.url), 60, 0.5, "nginx to answer /stats")
        browser.get(fresh_service.url + "/")
        wait_for(lambda: badges(browser) == ["starting"], 30, 0.2, "the starting badge")
        assert badges(browser, "textContent") == ["engine starting"]
        engine = stats(fresh_service.url)["engines"][0]
        assert engine["state"] == "starting" and engine["program"] in ("STARTING", "RUNNING")
        assert not is_healthy(fresh_service.url)
        OUTPUT_DIR.mkdir(exist_ok=True)
        browser.save_screenshot(str(OUTPUT_DIR / "dashboard-starting.png"))
    finally:
        os.killpg(pid, signal.SIGCONT)
    wait_for(lambda: badges(browser) == ["up"], ENGINE_START_S, 1, "the engine to show as up")
    # nginx may ask another frontend than the page's last poll did, one that has not yet heard the engine's first heartbeat
    wait_for(lambda: stats(fresh_service.url)["engines"][0]["state"] == "up", 10, 0.2, "every frontend to see it up")
    assert_clean_console(browser)


def wait_until_serving(deployment: Deployment) -> None:
    wait_for(lambda: is_healthy(deployment.url), ENGINE_START_S, 1, "the service to turn healthy")
    for i in range(deployment.server["frontends"]):
        wait_for(lambda: is_healthy(deployment.frontend_url(i)), 60, 0.5, f"frontend {i} to turn healthy")


def charted(browser, chart: str, since: float = 0, until: float = float("inf")) -> list[list]:
    """The values of every point a chart holds, from its data; times in seconds since the epoch."""
    return browser.execute_script(
        "return charts[arguments[0]].points.filter((p) => p.time >= arguments[1] && p.time < arguments[2])"
        ".map((p) => p.values);", chart, since, min(until, 1e12))


LIVE_FIGURES = [("throughput", "total"), ("throughput", "output"), ("load", "in_flight"), ("ttft", "p50"),
                ("requests", "ended"), ("tpot", "p50")]


@pytest.mark.timeout(1200)  # the engine's start, if the test before did not wait it out
def test_charts_fill_under_load_and_a_page_opened_later_shows_the_load_from_history(fresh_service, browser):
    wait_until_serving(fresh_service)
    load_started = time.time()
    with Load(fresh_service.url, CLIENTS) as load:
        browser.get(fresh_service.url + "/")
        assert browser.title == "LLM service dashboard"
        # Each figure of the load in turn (on a busy machine a request can take longer than the
        # 10 s window, so they need not all show at the same moment).
        for chart, series in LIVE_FIGURES:
            wait_for(lambda: (latest(browser, chart, series) or 0) > 0, 180, 0.5, f"{chart} {series} on the chart")
        time.sleep(10)  # a stretch of load on every chart, for the screenshot and the history
        assert badges(browser) == ["up"]
        # Without keys every request is the tenant "default"'s: its row fills in under the load.
        wait_for(lambda: tenant_cells(browser).get("default", [""])[1] not in ("", "0"), 30, 0.5,
                 "the tenant's tokens this minute")
        row = tenant_cells(browser)["default"]
        assert int(row[3].replace(",", "")) > 0 and row[7].endswith(" ms")  # requests, TTFT p50
        assert [row[4], row[5]] == ["0", "0"]  # no 429, no timeout
        browser.find_element(By.CSS_SELECTOR, '#ranges [data-range="300"]').click()  # the last 5 minutes
        OUTPUT_DIR.mkdir(exist_ok=True)
        browser.save_screenshot(str(OUTPUT_DIR / "dashboard.png"))
    load_ended = time.time()
    assert load.errors == []
    no_gpu = browser.find_element(By.CSS_SELECTOR, '[data-chart="gpu-utilization"] .no-gpu')
    assert no_gpu.is_displayed() != has_gpu()
    assert_clean_console(browser)

    # A new page, opened after the load, with no request sent since: its charts already hold the load.
    time.sleep(2)
    browser.get(fresh_service.url + "/")
    wait_for(lambda: int(browser.find_element(By.CSS_SELECTOR, '[data-chart="throughput"]')
                         .get_attribute("data-points") or 0) > 0, 30, 0.2, "the history on the charts")
    during_load = charted(browser, "throughput", load_started, load_ended)
    # One point a second is sampled; a busy machine may delay a few of them.
    assert len(during_load) >= 0.5 * (load_ended - load_started)
    assert sum(1 for total, _, output in during_load if total and output) >= 10
    for chart in ("ttft", "tpot", "requests"):
        assert any(values[0] for values in charted(browser, chart, load_started, load_ended + 10))
    assert charted(browser, "throughput", load_started - 60, load_started)  # the idle time before too
    assert_clean_console(browser)


def test_stats_polled_every_second_stays_small_and_the_history_is_bounded(fresh_service):
    polled = stats(fresh_service.url)
    assert "history" not in polled
    assert len(httpx.get(fresh_service.url + "/stats", timeout=10).content) < 8000
    assert set(polled["point"]) >= {"time", "tokens_in", "tokens_out", "ended", "ttft_ms", "kv_cache_usage"}
    history = stats(fresh_service.url, history=1)["history"]
    assert 30 <= len(history) <= 900
    times = [point["time"] for point in history]
    assert times == sorted(times)
    # One sample a second: a late one (a busy event loop) is not made up for with a burst.
    assert len(history) - 3 <= history[-1]["time"] - history[0]["time"] <= 2 * len(history)


# A page on an allowed origin (cors.allowed_origins), beside the foreign one of tests/test_browser_origin_e2e.py.


def test_a_page_on_an_allowed_origin_is_served(fresh_service, browser):
    wait_until_serving(fresh_service)
    with page_server(ALLOWED_PAGE) as page:
        results = try_from_page(browser, page, fresh_service.url)
    answer = results["json"]
    assert answer.get("status") == 200, answer
    assert json.loads(answer["text"])["usage"]["completion_tokens"] == 4
    # Without a JSON content type the API still takes nothing, allowed origin or not.
    assert results["text_plain"].get("status") == 415 and "content-type" in results["text_plain"]["text"]


def test_a_killed_engine_shows_as_restarting_and_a_stopped_one_as_down(fresh_service, browser):
    wait_until_serving(fresh_service)
    browser.get(fresh_service.url + "/")
    wait_for(lambda: badges(browser) == ["up"], 30, 0.2, "the engine to show as up")
    os.kill(fresh_service.pid("engine-0"), signal.SIGKILL)
    wait_for(lambda: badges(browser) == ["restarting"], 30, 0.2, "the restarting badge")
    # Each frontend sees the heartbeats stop on its own clock: ask each one.
    for i in range(fresh_service.server["frontends"]):
        wait_for(lambda: engine_state(fresh_service.frontend_url(i)) == "restarting", 10, 0.2,
                 f"frontend {i} to say restarting")
    fresh_service.supervisorctl("stop", "engine-0")
    wait_for(lambda: badges(browser) == ["down"], 60, 0.2, "the down badge")
    wait_for(lambda: (stats(fresh_service.url) or {}).get("engines", [{}])[0].get("program") == "STOPPED", 10, 0.2,
             "supervisord's STOPPED in /stats")
    assert_clean_console(browser)

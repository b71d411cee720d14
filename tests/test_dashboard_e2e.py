"""The dashboard at / in headless Chromium (Debian's chromium and chromium-driver, driven by
selenium) while load runs: live charts fill with non-zero figures, the console stays clean, and a
screenshot lands in test-output/dashboard.png."""
import threading
import time
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.conftest import OUTPUT_DIR, has_gpu, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1150",
]
CLIENTS = 6


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


def test_dashboard_charts_live_figures_under_load(service, browser):
    with Load(service.url, CLIENTS) as load:
        browser.get(service.url + "/")
        assert browser.title == "LLM service dashboard"
        wait_for(lambda: (latest(browser, "throughput", "total") or 0) > 0, 60, 0.5, "throughput on the chart")
        time.sleep(12)  # a stretch of history on every chart for the screenshot
        assert latest(browser, "throughput", "total") > 0
        assert latest(browser, "throughput", "output") > 0
        assert latest(browser, "requests", "ended") > 0
        assert latest(browser, "ttft", "p50") > 0
        assert latest(browser, "tpot", "p50") > 0
        assert latest(browser, "load", "in_flight") > 0
        assert browser.find_element(By.ID, "engine-status").text == "engine up"
        OUTPUT_DIR.mkdir(exist_ok=True)
        browser.save_screenshot(str(OUTPUT_DIR / "dashboard.png"))
    assert load.errors == []
    no_gpu = browser.find_element(By.CSS_SELECTOR, '[data-chart="gpu-utilization"] .no-gpu')
    assert no_gpu.is_displayed() != has_gpu()
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []

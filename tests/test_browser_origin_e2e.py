"""A web page from another origin, in headless Chromium (the dashboard tests' setup), tries every
way to make the shared service (no API key, no allowed origin) generate: fetch() POSTs without a
content type, as text/plain, as a form, in no-cors mode, and as JSON. Nothing generates (the
frontends' count of generations sent to the engine does not move), each request that reached the
service was refused there, and the page can read none of the answers. A page on an allowed origin:
tests/test_dashboard_e2e.py."""
import httpx

from tests.browser_pages import metric_total, page_port, page_server, try_from_page
from tests.test_dashboard_e2e import browser  # noqa: F401  (the fixture)

SIMPLE = ("no_type", "text_plain", "form", "no_cors")


def test_a_page_from_another_origin_makes_nothing_generate_and_reads_nothing(service, browser):  # noqa: F811
    before = httpx.get(service.url + "/metrics", timeout=10).text
    with page_server(page_port()) as page:
        results = try_from_page(browser, page, service.url)
    after = httpx.get(service.url + "/metrics", timeout=10).text
    assert set(results) == {*SIMPLE, "json"}
    for name, result in results.items():
        # fetch() fails (CORS), or in no-cors mode the answer is opaque: nothing to read.
        readable = result.get("error") is None and result.get("type") != "opaque"
        assert not readable and not result.get("text"), (name, result)
    generations = "llm_engine_routed_requests_total"
    assert metric_total(after, generations) == metric_total(before, generations)
    # The simple requests did reach the service, and were refused there before any work.
    refused = metric_total(after, "llm_http_requests_total", status="403") - \
        metric_total(before, "llm_http_requests_total", status="403")
    assert refused >= len(SIMPLE)

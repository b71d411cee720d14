"""A web page on an origin of its own (a second local HTTP server) whose script calls the service
with fetch(), for the browser tests: what a page on a foreign or an allowed origin gets from it."""
import contextlib
import http.server
import threading

from tests.conftest import free_port

PAGE = b"""<!doctype html><html><head><title>another origin</title></head><body><script>
async function attempt(url, init) {
  try {
    const response = await fetch(url, init);
    let text = null;
    try { text = await response.text(); } catch (error) {}
    return {status: response.status, type: response.type, text: text};
  } catch (error) {
    return {error: String(error)};
  }
}
// Every way a page may POST to another origin: as a "simple" request (no type, text/plain, a form,
// no-cors), which no preflight precedes, and as JSON, which one does.
window.tryAll = async (service) => {
  const prompt = JSON.stringify({prompt: "from a page", max_tokens: 4});
  const chat = JSON.stringify({messages: [{role: "user", content: "hi"}], max_tokens: 4, ignore_eos: true});
  return {
    no_type: await attempt(service + "/generate", {method: "POST", body: prompt}),
    text_plain: await attempt(service + "/v1/completions", {method: "POST", body: prompt,
                                                             headers: {"content-type": "text/plain"}}),
    form: await attempt(service + "/v1/completions", {method: "POST", body: prompt,
                                                       headers: {"content-type": "application/x-www-form-urlencoded"}}),
    no_cors: await attempt(service + "/v1/chat/completions", {method: "POST", mode: "no-cors", body: chat}),
    json: await attempt(service + "/v1/chat/completions", {method: "POST", body: chat,
                                                            headers: {"content-type": "application/json"}}),
  };
};
</script></body></html>"""


class PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):
        pass


def page_port() -> int:
    return free_port()


@contextlib.contextmanager
def page_server(port: int):
    """The page at http://127.0.0.1:<port>/ until the block ends."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), PageHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def try_from_page(browser, page_url: str, service_url: str) -> dict:
    """Open the page and run every fetch() of it against the service; what each gave the page."""
    browser.get(page_url + "/")
    browser.set_script_timeout(120)
    return browser.execute_async_script(
        "const done = arguments[arguments.length - 1]; window.tryAll(arguments[0]).then(done);", service_url)


def metric_total(metrics: str, name: str, **labels: str) -> float:
    """The sum of a metric's series whose labels include `labels`."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{key}="{value}"' in line for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total



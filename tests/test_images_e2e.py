"""Images end to end, started by `python -m common.service` as `make serve` starts it: the tiny vision
model (common/vision_model.py, SmolVLM's shape) as this host's pool on a vLLM engine of its own, and the
session service's chat engine as a remote pool, behind one nginx. Images go in through the openai and
anthropic packages as data URLs and base64, and by URL from an HTTP server of the test's on 127.0.0.1,
the one host of `allowed_media_domains`; a URL elsewhere, an image too large or not an image, and an
image for the text-only pool are each a 400 naming the field, and the service is whole after them."""
import base64
import io
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import httpx
import openai
import pytest
import yaml
from openai import OpenAI
from PIL import Image

from common import default_model, vision_model
from common.config import ROOT
from tests.conftest import CPU_KV_CACHE_GIB, ENGINE_ARGS, frontends_only, health, wait_for, wait_until_whole
from tests.test_fleet_e2e import per_engine

VISION = vision_model.NAME
CHAT = default_model.NAME
MAX_IMAGE_BYTES = 65_536
MAX_IMAGE_PIXELS = 256 * 256


def png(size: tuple[int, int], color=None, seed: int = 0) -> bytes:
    """A PNG of one color, or of noise drawn with `seed` (which PNG cannot compress)."""
    if color is None:
        image = Image.frombytes("RGB", size, random.Random(seed).randbytes(size[0] * size[1] * 3))
    else:
        image = Image.new("RGB", size, color)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


RED = png((48, 32), (220, 20, 20))
NOISE = png((48, 32), seed=1)
NOISE_TOO_BIG = png((160, 160), seed=2)  # over MAX_IMAGE_BYTES
TOO_MANY_PIXELS = png((300, 300), (0, 0, 255))  # small in bytes, over MAX_IMAGE_PIXELS


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def ask(url: str, text: str = "What is in this picture?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


class ImageFiles(BaseHTTPRequestHandler):
    """/red.png, /too-big.png, and /away (a redirect to the same image on a host not allowed)."""

    def do_GET(self):
        files = {"/red.png": RED, "/too-big.png": NOISE_TOO_BIG}
        if self.path == "/away":
            self.send_response(302)
            self.send_header("location", f"http://localhost:{self.server.server_port}/red.png")
            self.end_headers()
        elif self.path in files:
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.end_headers()
            self.wfile.write(files[self.path])
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImageFiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def images(service):
    deployment = frontends_only(service, "images", frontends=1, local_engines=True,
                                engines=[{**service.engine_addresses, "model": CHAT}],
                                allowed_media_domains=["127.0.0.1"],
                                limits={"max_image_bytes": MAX_IMAGE_BYTES, "max_image_pixels": MAX_IMAGE_PIXELS})
    model = {"model": str(vision_model.ensure(ROOT / ".data")), "served_model_name": VISION,
             "cpu_kv_cache_gib": CPU_KV_CACHE_GIB, "engine_args": ENGINE_ARGS}
    (deployment.dir / "inference.yml").write_text(yaml.safe_dump({"models": [model]}))
    starting = deployment.start("-m", "common.service", log="service")
    try:
        wait_until_whole(deployment, starting)
        # A loaded 2-core machine has been seen to take over 3 minutes to start vLLM.
        wait_for(lambda: health(deployment.url).json()["status"] == "ok", 300, 0.5, "both pools up")
        yield deployment
    finally:
        deployment.close()


@pytest.fixture(scope="module")
def client(images) -> OpenAI:
    return OpenAI(base_url=images.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def refusal(call, **kwargs) -> dict:
    with pytest.raises(openai.BadRequestError) as refused:
        call(**kwargs)
    return refused.value.body


def test_an_image_chat_through_the_openai_package(client):
    answers = [client.chat.completions.create(model=VISION, messages=ask(data_url(image)), max_tokens=8,
                                              temperature=0) for image in (RED, RED, NOISE)]
    assert all(a.model == VISION and a.usage.completion_tokens == 8 and a.choices[0].message.content
               for a in answers)
    # Greedy: the same image the same answer; the model sees the image, so another image another answer.
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
    assert answers[0].choices[0].message.content != answers[2].choices[0].message.content


def test_usage_counts_the_placeholder_tokens_the_model_ran(images, client):
    messages = ask(data_url(RED))
    counted = httpx.post(images.url + "/tokenize", json={"model": VISION, "messages": messages,
                                                         "add_generation_prompt": True}, timeout=60).json()["count"]
    answer = client.chat.completions.create(model=VISION, messages=messages, max_tokens=2)
    # vLLM's processor made the template's one <image> of: <fake_token_around_image> <global-img>, the
    # image's IMAGE_TOKENS <image>s, <fake_token_around_image>.
    assert answer.usage.prompt_tokens == counted - 1 + vision_model.IMAGE_TOKENS + 3


def test_an_image_through_the_anthropic_package_and_the_responses_api(images, client):
    claude = anthropic.Anthropic(base_url=images.url, api_key="unused", max_retries=0, timeout=120)
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(RED).decode()}
    # The Messages API takes no ignore_eos: greedy, so the count cannot end early on an EOS drawn at random.
    message = claude.messages.create(model=VISION, max_tokens=6, messages=[{"role": "user", "content": [
        {"type": "image", "source": source}, {"type": "text", "text": "Describe it."}]}],
        extra_body={"temperature": 0.0})
    assert message.usage.output_tokens == 6 and message.content[0].text
    expanded = vision_model.IMAGE_TOKENS + 2
    # Anthropic's input_tokens leave out what the prefix cache served (cache_read_input_tokens).
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens == claude.messages.count_tokens(
        model=VISION, messages=[{"role": "user", "content": [{"type": "image", "source": source},
                                                             {"type": "text", "text": "Describe it."}]}]).input_tokens + expanded
    response = client.responses.create(model=VISION, max_output_tokens=6, input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": data_url(RED)}, {"type": "input_text", "text": "Describe it."}]}],
        extra_body={"ignore_eos": True})
    assert response.status == "incomplete" and response.output_text


def test_an_image_url_on_an_allowed_host_is_fetched_and_one_elsewhere_refused(images, client, image_host):
    answer = client.chat.completions.create(model=VISION, messages=ask(f"{image_host}/red.png"), max_tokens=4,
                                            extra_body={"ignore_eos": True})
    assert answer.usage.completion_tokens == 4
    elsewhere = image_host.replace("127.0.0.1", "localhost")
    for url in (f"{elsewhere}/red.png", f"{image_host}/away"):
        error = refusal(client.chat.completions.create, model=VISION, messages=ask(url), max_tokens=4)
        assert error["param"] == "messages[0].content[0].image_url"
        assert "allowed_media_domains" in error["message"]
    fetched = per_engine(images.url, "llm_image_fetched_bytes_total", "model")
    assert fetched[(VISION,)] >= len(RED)


@pytest.mark.parametrize("url, words", [
    (data_url(NOISE_TOO_BIG), "larger than the limit"),
    ("http://127.0.0.1:{port}/too-big.png", "larger than the limit"),
    (data_url(TOO_MANY_PIXELS), "pixels"),
    (data_url(b"these bytes are no image"), "cannot be decoded"),
    ("data:image/png;base64,!!not base64!!", "malformed"),
])
def test_an_oversized_or_malformed_image_is_a_400_naming_it(client, image_host, url, words):
    url = url.format(port=image_host.rsplit(":", 1)[1])
    error = refusal(client.chat.completions.create, model=VISION, messages=ask(url), max_tokens=4)
    assert error["param"] == "messages[0].content[0].image_url" and words in error["message"]


def test_an_image_for_the_text_only_pool_is_a_400_and_the_service_is_whole_after(images, client):
    error = refusal(client.chat.completions.create, model=CHAT, messages=ask(data_url(RED)), max_tokens=4)
    assert error["param"] == "messages[0].content[0].image_url" and "takes no images" in error["message"]
    assert health(images.url).json()["models"] == [{"model": model, "ready": True} for model in (VISION, CHAT)]
    for model, messages in ((VISION, ask(data_url(NOISE))), (CHAT, [{"role": "user", "content": "Hello"}])):
        answer = client.chat.completions.create(model=model, messages=messages, max_tokens=3,
                                                extra_body={"ignore_eos": True})
        assert answer.usage.completion_tokens == 3
    assert per_engine(images.url, "llm_request_images_total", "model", "source")[(VISION, "inline")] >= 1
    with httpx.Client(timeout=10) as http:
        assert http.get(images.url + "/metrics").status_code == 200

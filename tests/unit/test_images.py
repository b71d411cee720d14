"""Images (frontend/media.py): block hashes that carry image content, the limits, and each protocol's
image shape on the frontend harness with a vision pool (a scripted engine that says it takes images,
with the tiny vision model's tokenizer): the image reaches the engine as bytes in the ADD, at the
placeholder the chat template wrote, and every bad image is a 400 naming its field that sends nothing."""
import asyncio
import base64
import io
import struct
import zlib
from types import SimpleNamespace

import pytest
from PIL import Image

from common import default_model, vision_model
from common.blocks import block_hashes
from common.config import RequestLimits, RouterConfig
from common.messages import Add
from engine_worker.images import image_token_id, prompt_of
from frontend.cache_record import CacheRecord
from frontend.http import HTTPError
from frontend.load_view import LoadView
from frontend.media import ImageSource, check_allowed, checked_key, from_data_url
from frontend.router import Router
from frontend.run.answer import counted
from frontend.run.choices import Update

VISION = vision_model.NAME
CHAT, RESP, MSG = "/v1/chat/completions", "/v1/responses", "/v1/messages"


def png(size=(8, 8), color=(255, 0, 0)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's header)."""
    data = bytearray(png((1, 1)))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


RED, BLUE = png(), png(color=(0, 0, 255))


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_chat(*urls: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "What is it?"}]}]


# Block hashes


def test_a_block_holding_an_image_hashes_its_content():
    tokens = list(range(40))
    red, blue = {20: 111}, {20: 222}
    assert block_hashes(tokens, 16, extra_keys=red) == block_hashes(tokens, 16, extra_keys=dict(red))
    with_red, with_blue = block_hashes(tokens, 16, extra_keys=red), block_hashes(tokens, 16, extra_keys=blue)
    assert with_red[0] == with_blue[0]  # the block before the image is shared
    assert with_red[1] != with_blue[1]  # the image's block and every block after it differ
    assert with_red[1] != block_hashes(tokens, 16)[1]


def test_the_same_image_the_same_key_another_image_another():
    limits = RequestLimits()
    assert checked_key(RED, "f", limits) == checked_key(png(), "f", limits)
    assert checked_key(RED, "f", limits) != checked_key(BLUE, "f", limits)


# Limits


def test_an_inline_image_is_bounded_before_it_is_decoded():
    source = ImageSource(data_url(png((64, 64))), "messages[0].content[0].image_url")
    with pytest.raises(HTTPError) as refused:
        from_data_url(source, 100)
    assert refused.value.param == source.field and "larger than the limit of 100 bytes" in refused.value.message
    assert from_data_url(source, 1_000_000) == png((64, 64))


@pytest.mark.parametrize("data, words", [
    (claiming(100_000, 100_000), "more pixels than the limit"),
    (claiming(100, 100), "more than the limit of 4096 pixels"),
    (b"GIF89a but not really", "cannot be decoded"),
    (RED[:40], "cannot be decoded"),
])
def test_an_image_over_the_pixel_limit_or_undecodable_is_refused(data, words):
    with pytest.raises(HTTPError) as refused:
        checked_key(data, "f", RequestLimits(max_image_pixels=4096))
    assert refused.value.param == "f" and words in refused.value.message


@pytest.mark.parametrize("url, allowed", [
    ("https://images.example.com/a.png", True),
    ("http://IMAGES.example.com:8080/a.png", True),
    ("https://evil.example/a.png", False),
    ("https://images.example.com.evil.example/a.png", False),
    ("file:///etc/passwd", False),
    ("ftp://images.example.com/a.png", False),
])
def test_only_http_urls_on_allowed_hosts_are_fetched(url, allowed):
    try:
        check_allowed(url, ["images.example.com"], "f")
    except HTTPError as refused:
        assert not allowed and refused.param == "f"
    else:
        assert allowed


# Each protocol on the harness


@pytest.fixture
def vision(frontends):
    frontend = frontends.get(vision=True, limits={"max_images_per_request": 3, "max_image_pixels": 4096})
    yield frontend
    frontend.wait(frontend.nothing_left, 10, "every request of the test to leave the frontend and the engine")


def sent(frontend):
    return frontend.pool_engines[VISION].added


def test_a_chat_image_reaches_the_engine_at_its_placeholder(vision):
    answer = vision.post(CHAT, {"model": VISION, "messages": image_chat(data_url(RED), data_url(BLUE)),
                                "max_tokens": 4})
    assert answer.status_code == 200, answer.text
    add = sent(vision)[-1]
    assert add.images == [RED, BLUE]
    image_token = vision.pool_engines[VISION].hf.convert_tokens_to_ids("<image>")
    assert add.prompt_token_ids.count(image_token) == 2


def test_responses_input_image_and_messages_image_blocks_reach_the_engine(vision):
    answer = vision.post(RESP, {"model": VISION, "max_output_tokens": 4, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": data_url(RED)}, {"type": "input_text", "text": "What is it?"}]}]})
    assert answer.status_code == 200, answer.text
    assert sent(vision)[-1].images == [RED]
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(BLUE).decode()}
    answer = vision.post(MSG, {"model": VISION, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "And this?"}, {"type": "image", "source": source}]}]})
    assert answer.status_code == 200, answer.text
    assert sent(vision)[-1].images == [BLUE]


IMAGE_PART = {"type": "image_url", "image_url": {"url": data_url(RED)}}
BAD_IMAGES = [
    ("chat: a URL on a host not allowed", CHAT, {"messages": image_chat("https://evil.example/a.png")},
     "messages[0].content[0].image_url", "allowed_media_domains"),
    ("chat: a file URL", CHAT, {"messages": image_chat("file:///etc/passwd")},
     "messages[0].content[0].image_url", "data URL or an http(s) URL"),
    ("chat: base64 that is not", CHAT, {"messages": image_chat("data:image/png;base64,@@@@")},
     "messages[0].content[0].image_url", "malformed"),
    ("chat: a data URL without base64", CHAT, {"messages": image_chat("data:image/png,abc")},
     "messages[0].content[0].image_url", "base64 data URL"),
    ("chat: a pixel bomb", CHAT, {"messages": image_chat(data_url(claiming(50_000, 50_000)))},
     "messages[0].content[0].image_url", "pixels"),
    ("chat: bytes that are no image", CHAT, {"messages": image_chat(data_url(b"hello"))},
     "messages[0].content[0].image_url", "cannot be decoded"),
    ("chat: 4 images over 3", CHAT, {"messages": image_chat(*[data_url(RED)] * 4)},
     "messages[0].content[3].image_url", "limit of 3"),
    ("chat: 2 images x n=2 over 3", CHAT, {"messages": image_chat(data_url(RED), data_url(RED)), "n": 2},
     "messages[0].content[1].image_url", "n=2"),
    ("chat: an image part without image_url", CHAT,
     {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content[0].image_url", "data URL or an http(s) URL"),
    ("responses: an input_image on a host not allowed", RESP,
     {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://evil.example/a.png"}]}]},
     "input[0].content[0].image_url", "allowed_media_domains"),
    ("messages: a url source on a host not allowed", MSG,
     {"max_tokens": 4, "messages": [{"role": "user", "content": [
         {"type": "image", "source": {"type": "url", "url": "https://evil.example/a.png"}}]}]},
     "messages[0].content[0].source", "allowed_media_domains"),
    ("messages: base64 of no image", MSG,
     {"max_tokens": 4, "messages": [{"role": "user", "content": [
         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGVsbG8="}}]}]},
     "messages[0].content[0].source", "cannot be decoded"),
]


@pytest.mark.parametrize("name, route, body, field, words", BAD_IMAGES, ids=[row[0] for row in BAD_IMAGES])
def test_a_bad_image_is_a_400_naming_its_field_and_sends_nothing(vision, name, route, body, field, words):
    before = len(sent(vision))
    answer = vision.post(route, {"model": VISION, **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    named = error["param"] if route != MSG else error["message"]
    assert field in named and words in error["message"]
    assert len(sent(vision)) == before


def test_an_image_for_a_text_only_pool_is_a_400_naming_its_field(vision):
    answer = vision.post(CHAT, {"messages": image_chat(data_url(RED)), "max_tokens": 4})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "messages[0].content[0].image_url" and "takes no images" in error["message"]


# The router


def test_the_router_keeps_a_prompt_with_the_same_image_together_and_not_one_with_another():
    policy = Router(RouterConfig(block_size=16), 2)
    engines = {rank: SimpleNamespace(load_view=LoadView(), cache_record=CacheRecord(rank, 1 << 20)) for rank in (0, 1)}
    tokens = [7] * 8 + [9000] + list(range(200))  # an image token at 8, then the question
    first = policy.pick(tokens, engines, {8: 111})
    engines[first.rank].load_view.sent_request(first.prefill_tokens, len(tokens))
    same = policy.pick(tokens, engines, {8: 111})
    assert (same.rank, same.reason, same.prefill_tokens) == (first.rank, "prefix", len(tokens) - 208)
    other = policy.pick(tokens, engines, {8: 222})
    assert other.prefill_tokens == len(tokens)  # no block of it is cached anywhere: the image differs


@pytest.mark.parametrize("route, body, field", [
    ("/tokenize", {"messages": image_chat(data_url(RED))}, "messages[0].content[0].image_url"),
    ("/v1/messages/count_tokens", {"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": base64.b64encode(RED).decode()}}]}]},
     "messages[0].content[0].source"),
])
def test_token_counts_take_images_only_for_a_vision_pool(vision, route, body, field):
    refused = vision.post(route, {"model": default_model.NAME, **body})
    assert refused.status_code == 400 and field in refused.text and "takes no images" in refused.text
    counted = vision.post(route, {"model": VISION, **body})
    assert counted.status_code == 200, counted.text


# The engine's side (engine_worker/images.py)


def test_the_engine_gives_vllm_the_images_decoded_and_names_the_models_image_token():
    add = Add("r", "fe", [1, 2, 3], {"max_tokens": 1}, images=[RED, png((4, 2), (0, 0, 255))])
    prompt = prompt_of(add)
    assert prompt["prompt_token_ids"] == [1, 2, 3]
    assert [(image.mode, image.size) for image in prompt["multi_modal_data"]["image"]] == [("RGB", (8, 8)),
                                                                                         ("RGB", (4, 2))]
    assert prompt_of(Add("r", "fe", [1], {})) == {"prompt_token_ids": [1]}
    vision = SimpleNamespace(model_config=SimpleNamespace(is_multimodal_model=True,
                                                          hf_config=SimpleNamespace(image_token_index=32000)))
    text = SimpleNamespace(model_config=SimpleNamespace(is_multimodal_model=False, hf_config=SimpleNamespace()))
    assert (image_token_id(vision), image_token_id(text)) == (32000, None)


def test_usage_takes_the_engines_first_count_of_the_prompt():
    """A moved generation's engine counts its prompt with the tokens generated before: not taken."""
    answer = SimpleNamespace(prompt_tokens=21)
    answer.count_prompt = lambda tokens: setattr(answer, "prompt_tokens", tokens)

    async def updates():
        for prompt_tokens in (27, None, 30):
            yield Update(0, [], [5], 1, prompt_tokens=prompt_tokens)

    async def run():
        return [update async for update in counted(updates(), answer)]

    assert len(asyncio.run(run())) == 3 and answer.prompt_tokens == 27

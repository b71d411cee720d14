"""Images of a chat (docs/images.md): taken from data URLs, or fetched from http(s) URLs on the hosts
server.yml's `allowed_media_domains` lists, each bounded in bytes, pixels and fetch time, checked to
decode, and hashed for the router.

Every step that grows with an image (base64, decoding, hashing) runs on a worker thread; a fetch is
awaited, its bytes counted as they come, its redirects followed only to allowed hosts. What goes to the
engine is the image's bytes as given: bounded by `limits.max_image_bytes` on the wire, where a decoded
array would be up to `max_image_pixels` x 3 bytes. A problem is a 400 that names the image's field.
"""
import asyncio
import binascii
import hashlib
import io
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx
import pybase64
from PIL import Image, UnidentifiedImageError

from common.config import RequestLimits, ServerConfig
from frontend.http import HTTPError
from frontend.metrics import IMAGE_FETCHED_BYTES, IMAGES
from frontend.text.chat import Chat
from frontend.text.chat_template import chat_prompt_ids

DECODERS = ThreadPoolExecutor(2, thread_name_prefix="images")
MAX_REDIRECTS = 5
DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,", re.IGNORECASE)


class ImageSource(NamedTuple):
    url: str  # a data: URL, or http(s)
    field: str  # where the request gave it, for errors


class PromptImages(NamedTuple):
    """The images of one prompt, in the order of its placeholder tokens."""

    data: list[bytes]  # each image as given (PNG, JPEG, ...): what the engine receives
    # Placeholder position in the prompt -> the image's content hash: the router's block hashes cover it.
    keys: dict[int, int]


def image_sources(chat: Chat) -> list[ImageSource]:
    """The chat's image parts in prompt order, each with its field (`chat.image_fields` where the
    protocol's fields are not the chat's own)."""
    sources = []
    for index, message in enumerate(chat.messages):
        for part_index, part in enumerate(message.content if isinstance(message.content, list) else ()):
            if part.type == "image_url":
                field = f"messages[{index}].content[{part_index}].image_url"
                sources.append(ImageSource(part.image_url.url if part.image_url else "", field))
    if chat.image_fields:
        sources = [ImageSource(source.url, field) for source, field in zip(sources, chat.image_fields)]
    return sources


async def chat_prompt(pool, chat: Chat, server: ServerConfig, generations: int = 1
                      ) -> tuple[list[int], PromptImages | None]:
    """The chat's prompt token ids (its template rendered, frontend/text/chat_template.py) and its images,
    loaded, checked and placed at the image tokens the template wrote (None when it has none). Each of
    the request's `generations` (n) carries the images to the engine: they count n times."""
    sources = taken_images(pool, chat)
    if not sources:
        return await chat_prompt_ids(pool.tokenizer, chat, server), None
    image_token_id = pool.image_token_id
    limits = server.limits
    if len(sources) * generations > limits.max_images_per_request:
        many = f"{len(sources)} images" + (f" x n={generations}" if generations > 1 else "")
        raise HTTPError(400, f"the request has {many}, more than the limit of {limits.max_images_per_request} "
                             "images", sources[min(limits.max_images_per_request, len(sources) - 1)].field)
    try:
        async with asyncio.TaskGroup() as group:  # the first bad image cancels the other fetches
            tasks = [group.create_task(load(source, pool.model, server)) for source in sources]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    loaded = [task.result() for task in tasks]
    prompt_ids = await chat_prompt_ids(pool.tokenizer, chat, server)
    positions = [position for position, token in enumerate(prompt_ids) if token == image_token_id]
    if len(positions) != len(sources):
        raise HTTPError(400, f"the chat template placed {len(positions)} images in the prompt, not the "
                             f"{len(sources)} the messages hold", "messages")
    return prompt_ids, PromptImages([data for data, _ in loaded], {p: key for p, (_, key) in zip(positions, loaded)})


def taken_images(pool, chat: Chat) -> list[ImageSource]:
    """The chat's images, when its pool's model takes images; a 400 naming the first when it does not."""
    sources = image_sources(chat)
    if sources and pool.image_token_id is None:
        raise HTTPError(400, f"the model {pool.model} takes no images", sources[0].field)
    return sources


async def load(source: ImageSource, model: str, server: ServerConfig) -> tuple[bytes, int]:
    """One image's bytes, checked to decode within the limits, and its content hash."""
    loop = asyncio.get_running_loop()
    limits = server.limits
    if source.url[:5].lower() == "data:":
        data = await loop.run_in_executor(DECODERS, from_data_url, source, limits.max_image_bytes)
        IMAGES.labels(model, "inline").inc()
    else:
        data = await fetch(source, server)
        IMAGES.labels(model, "url").inc()
        IMAGE_FETCHED_BYTES.labels(model).inc(len(data))
    key = await loop.run_in_executor(DECODERS, checked_key, data, source.field, limits)
    return data, key


def from_data_url(source: ImageSource, max_bytes: int) -> bytes:
    found = DATA_URL.match(source.url)
    if found is None:
        raise HTTPError(400, "an inline image must be a base64 data URL (data:image/png;base64,...)", source.field)
    payload = source.url[found.end():]
    check_size(len(payload) // 4 * 3, max_bytes, source.field)
    try:
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPError(400, "the image's base64 data is malformed", source.field) from None


def check_size(size: int, max_bytes: int, field: str) -> None:
    if size > max_bytes:
        raise HTTPError(400, f"the image is larger than the limit of {max_bytes} bytes", field)


def checked_key(data: bytes, field: str, limits: RequestLimits) -> int:
    """The image's content hash, once it decoded within `max_image_pixels` (counted from its header,
    before the pixels are decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > limits.max_image_pixels:
                    raise HTTPError(400, f"the image is {width} x {height} pixels, more than the limit of "
                                         f"{limits.max_image_pixels} pixels", field)
                image.load()
    except HTTPError:
        raise
    except Image.DecompressionBombError:  # Pillow's own bound, far above any sensible max_image_pixels
        raise HTTPError(400, f"the image has more pixels than the limit of {limits.max_image_pixels}", field) from None
    except UnidentifiedImageError:
        raise HTTPError(400, "the image cannot be decoded: it is in no image format this server reads", field) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise HTTPError(400, f"the image cannot be decoded: {error}", field) from None
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


async def fetch(source: ImageSource, server: ServerConfig) -> bytes:
    """GET the image, following redirects only to allowed hosts, within the size and time limits."""
    limits = server.limits
    try:
        async with asyncio.timeout(limits.image_fetch_timeout_s):
            url = source.url
            async with httpx.AsyncClient(follow_redirects=False, timeout=limits.image_fetch_timeout_s) as client:
                for _ in range(MAX_REDIRECTS + 1):
                    check_allowed(url, server.allowed_media_domains, source.field)
                    async with client.stream("GET", url) as response:
                        if response.is_redirect:
                            url = str(response.url.join(response.headers["location"]))
                            continue
                        return await body_of(response, source.field, limits.max_image_bytes)
    except TimeoutError:
        raise HTTPError(400, f"fetching the image took more than {limits.image_fetch_timeout_s:g} s",
                        source.field) from None
    except httpx.HTTPError as error:
        raise HTTPError(400, f"the image could not be fetched: {error}", source.field) from None
    raise HTTPError(400, f"fetching the image was redirected more than {MAX_REDIRECTS} times", source.field)


def check_allowed(url: str, domains: list[str], field: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HTTPError(400, "an image URL must be a data URL or an http(s) URL", field)
    if parts.hostname.lower() not in {domain.lower() for domain in domains}:
        raise HTTPError(400, f"images are not fetched from {parts.hostname!r}: it is not in this server's "
                             "allowed_media_domains", field)


async def body_of(response: httpx.Response, field: str, max_bytes: int) -> bytes:
    if response.status_code != 200:
        raise HTTPError(400, f"fetching the image was answered {response.status_code}", field)
    declared = response.headers.get("content-length", "")
    if declared.isdigit():
        check_size(int(declared), max_bytes, field)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        check_size(len(body), max_bytes, field)
    return bytes(body)

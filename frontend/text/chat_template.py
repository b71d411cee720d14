"""Chat prompts: a Chat (frontend/text/chat.py) rendered with the model's own chat template
(tokenizer_config), or with the request's own where server.yml trusts request templates.

A template is code, and what it does grows with the request: it is rendered on a worker thread,
stopped past `limits.chat_template_timeout_s`, and its output is bounded in length.
"""
import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import msgspec

from common.config import ServerConfig
from frontend import tracing
from frontend.http import HTTPError
from frontend.text.chat import Chat, ChatMessage, MessageToolCall, ContentPart
from frontend.text.tokenizer import Tokenizer

# Many templates know only these four roles; OpenAI's newer "developer" is what "system" was.
ROLE_ALIASES = {"developer": "system"}


RENDERER = ThreadPoolExecutor(2, thread_name_prefix="chat-template")


class TemplateTimeout(Exception):
    pass


async def chat_prompt_ids(tokenizer: Tokenizer, chat: Chat, server: ServerConfig,
                          add_special_tokens: bool = False) -> list[int]:
    template, field = request_template(chat, server)
    if template is None and not tokenizer.hf.chat_template:
        raise HTTPError(400, "this model has no chat template, so it cannot chat: use /v1/completions", "messages")
    continuing = chat.continue_final_message
    if continuing and chat.messages[-1].role != "assistant":
        raise HTTPError(400, "continue_final_message needs an assistant message last", "continue_final_message")
    limits = server.limits
    loop = asyncio.get_running_loop()
    with tracing.span("render", **{"llm.messages": len(chat.messages)}):
        prompt = await loop.run_in_executor(RENDERER, render, tokenizer, chat, template, limits.chat_template_timeout_s)
    if len(prompt) > limits.max_chat_prompt_chars:
        raise HTTPError(400, f"the rendered chat prompt is {len(prompt)} characters long, more than the limit of "
                             f"{limits.max_chat_prompt_chars}", field)
    # The template writes every special token itself, BOS included where the model wants one
    # (/tokenize may ask for them on top, as vLLM's does).
    return (await tokenizer.encode_prompts([prompt], add_special_tokens))[0]


def request_template(chat: Chat, server: ServerConfig) -> tuple[str | None, str]:
    """The request's own chat template, if it brings one and may, and the field that names it."""
    kwargs = chat.chat_template_kwargs or {}
    if "chat_template" in kwargs:
        template, field = kwargs["chat_template"], "chat_template_kwargs.chat_template"
    else:
        template, field = chat.chat_template, "chat_template"
    if template is None:
        return None, "messages"
    if not server.trust_request_chat_template:
        raise HTTPError(400, f"{field}: this server does not take chat templates from requests "
                             "(trust_request_chat_template in conf/server.yml)", field)
    if not isinstance(template, str):
        raise HTTPError(400, f"{field} must be a string", field)
    return template, field


def render(tokenizer: Tokenizer, chat: Chat, template: str | None, timeout_s: float) -> str:
    """On a worker thread: the prompt text, or a 400 when the template refuses or runs too long."""
    field = "messages" if template is None else "chat_template"
    continuing = chat.continue_final_message
    tools = [msgspec.to_builtins(tool) for tool in chat.tools] if chat.tools else None
    kwargs = {name: value for name, value in (chat.chat_template_kwargs or {}).items() if name != "chat_template"}
    sys.settrace(deadline_tracer(time.monotonic() + timeout_s))
    try:
        return tokenizer.hf.apply_chat_template(
            [template_message(message) for message in chat.messages],
            tools=tools,
            chat_template=template,
            add_generation_prompt=chat.add_generation_prompt and not continuing,
            continue_final_message=continuing,
            tokenize=False,
            **kwargs,
        )
    except TemplateTimeout:
        raise HTTPError(400, f"rendering the chat template took more than {timeout_s:g} s", field) from None
    except Exception as error:  # the template's own raise_exception, or a message it cannot take
        raise HTTPError(400, f"the chat template refused the messages: {error}", field) from None
    finally:
        sys.settrace(None)


def deadline_tracer(deadline: float):
    """A trace function that stops the rendering once past `deadline`: it sees every Python call
    and every line of the compiled template, so even a template loop that calls nothing ends."""

    def on_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise TemplateTimeout()
        return on_line

    def on_call(frame, event, arg):
        if time.monotonic() > deadline:
            raise TemplateTimeout()
        return on_line if frame.f_code.co_filename == "<template>" else None

    return on_call


def template_message(message: ChatMessage) -> dict:
    rendered = {"role": ROLE_ALIASES.get(message.role, message.role), "content": content_of(message.content)}
    if message.name is not None:
        rendered["name"] = message.name
    if message.tool_calls:
        rendered["tool_calls"] = [template_tool_call(call) for call in message.tool_calls]
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


def content_of(content: str | list[ContentPart] | None) -> str | list[dict]:
    """Text as one string; with images, parts as vision models' templates take them: {"type": "image"}
    where each image goes (the engine's processor turns it into the model's placeholder tokens)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    for part in content:
        if part.type not in ("text", "image_url") or (part.type == "text" and part.text is None):
            raise HTTPError(400, f"only text and image_url content is supported, not {part.type!r}", "messages")
    if all(part.type == "text" for part in content):
        return "".join(part.text for part in content)
    return [{"type": "image"} if part.type == "image_url" else {"type": "text", "text": part.text} for part in content]


def template_tool_call(call: MessageToolCall) -> dict:
    # Templates write the arguments with `| tojson`, so they get an object where the JSON text is one.
    arguments = call.function.arguments
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return {"id": call.id, "type": call.type, "function": {"name": call.function.name, "arguments": arguments}}

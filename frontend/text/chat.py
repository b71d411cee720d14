"""A chat as every protocol hands it to the chat template: messages with their content parts and tool
calls, and the tools the model may call.

The shapes are OpenAI's, as chat templates expect them: OpenAI's requests carry them as they are
(frontend/openai/protocol.py takes them from here), other protocols translate into them.
"""
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


class ImageURL(msgspec.Struct):
    url: str  # a data URL, or http(s) on a host of allowed_media_domains (frontend/media.py)
    detail: str | None = None


class ContentPart(msgspec.Struct):
    """A text part, or an image_url part (other protocols' images are put in as one)."""

    type: str
    text: str | None = None
    image_url: ImageURL | None = None


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str | dict[str, Any] = "{}"


class MessageToolCall(msgspec.Struct):
    function: FunctionCall
    id: str | None = None
    type: Literal["function"] = "function"


class ChatMessage(msgspec.Struct):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(msgspec.Struct, omit_defaults=True):
    name: Annotated[str, Meta(min_length=1)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct, kw_only=True):
    # In OpenAI's order: templates write tools out as JSON.
    type: Literal["function"] = "function"
    function: FunctionDefinition


class Chat(msgspec.Struct, kw_only=True):
    """What the chat template renders: the conversation, the tools, and how the prompt ends."""

    messages: list[ChatMessage]
    tools: list[Tool] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False  # the last (assistant) message is continued, not answered
    chat_template: str | None = None  # refused unless server.yml's trust_request_chat_template
    chat_template_kwargs: dict[str, Any] | None = None
    # The request's field of each image_url part, in order, where the protocol's fields are not the
    # chat's own (messages[i].content[j].image_url): for errors that name it.
    image_fields: list[str] = []

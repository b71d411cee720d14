"""A chat as every protocol hands it to the chat template: messages with their content parts and tool
calls, and the tools the model may call.

The shapes are OpenAI's, as chat templates expect them: OpenAI's requests carry them as they are
(frontend/openai/protocol.py takes them from here), other protocols translate into them.
"""
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


class TextPart(msgspec.Struct):
    type: str
    text: str | None = None


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str | dict[str, Any] = "{}"


class MessageToolCall(msgspec.Struct):
    function: FunctionCall
    id: str | None = None
    type: Literal["function"] = "function"


class ChatMessage(msgspec.Struct):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
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

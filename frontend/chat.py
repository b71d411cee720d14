"""Chat prompts: OpenAI messages rendered with the model's own chat template (tokenizer_config)."""
import json

import msgspec

from frontend.http import HTTPError
from frontend.openai_protocol import ChatCompletionRequest, ChatMessage, MessageToolCall, TextPart
from frontend.tokenizer import Tokenizer

# Many templates know only these four roles; OpenAI's newer "developer" is what "system" was.
ROLE_ALIASES = {"developer": "system"}


async def chat_prompt_ids(tokenizer: Tokenizer, body: ChatCompletionRequest) -> list[int]:
    prompt = render(tokenizer, body)
    # The template writes every special token itself, BOS included where the model wants one.
    return (await tokenizer.encode_prompts([prompt], add_special_tokens=False))[0]


def render(tokenizer: Tokenizer, body: ChatCompletionRequest) -> str:
    if not tokenizer.hf.chat_template:
        raise HTTPError(400, "this model has no chat template, so it cannot chat: use /v1/completions", "messages")
    continuing = body.continue_final_message
    if continuing and body.messages[-1].role != "assistant":
        raise HTTPError(400, "continue_final_message needs an assistant message last", "continue_final_message")
    tools = [msgspec.to_builtins(tool) for tool in body.tools] if body.tools else None
    try:
        return tokenizer.hf.apply_chat_template(
            [template_message(message) for message in body.messages],
            tools=tools,
            add_generation_prompt=body.add_generation_prompt and not continuing,
            continue_final_message=continuing,
            tokenize=False,
            **(body.chat_template_kwargs or {}),
        )
    except Exception as error:  # the template's own raise_exception, or a message it cannot take
        raise HTTPError(400, f"the chat template refused the messages: {error}", "messages") from None


def template_message(message: ChatMessage) -> dict:
    rendered = {"role": ROLE_ALIASES.get(message.role, message.role), "content": text_of(message.content)}
    if message.name is not None:
        rendered["name"] = message.name
    if message.tool_calls:
        rendered["tool_calls"] = [template_tool_call(call) for call in message.tool_calls]
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


def text_of(content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    for part in content:
        if part.type != "text" or part.text is None:
            raise HTTPError(400, f"only text content is supported, not {part.type!r}", "messages")
    return "".join(part.text for part in content)


def template_tool_call(call: MessageToolCall) -> dict:
    # Templates write the arguments with `| tojson`, so they get an object where the JSON text is one.
    arguments = call.function.arguments
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return {"id": call.id, "type": call.type, "function": {"name": call.function.name, "arguments": arguments}}

"""The embedded default model: a tiny random-weight Llama with a real BPE tokenizer.

Generated once into the data directory, deterministically (fixed seed, sorted training text),
so every code path of the server is real while no weights need to be downloaded.
"""
import json
import logging
import os
import shutil
import sys
import sysconfig
from pathlib import Path

log = logging.getLogger(__name__)

NAME = "tiny-llama"
VOCAB_SIZE = 8192
CONTEXT = 8192
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
TOOL_TAGS = ["<tool_call>", "</tool_call>"]
TRAINING_TEXT_BYTES = 4_000_000

# ChatML with Hermes-style tools, as Qwen2.5 and NousHermes models use.
CHAT_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}
{% endif %}You may call functions. Their signatures:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
For each call, answer <tool_call>{"name": <name>, "arguments": <args-json-object>}</tool_call><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}{% continue %}{% endif %}
{%- if message.role == 'tool' %}<|im_start|>tool
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{{ message.content or '' }}
{%- for call in message.tool_calls %}
<tool_call>{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments if call.function.arguments is string else call.function.arguments | tojson }}}</tool_call>
{%- endfor %}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / NAME


def ensure(data_dir: str | os.PathLike) -> Path:
    """Return the model directory, generating it first if it is not there yet."""
    target = path(data_dir)
    if (target / "complete").exists():
        return target
    log.info("generating the embedded default model into %s (once)", target)
    staging = target.with_name(f"{NAME}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = _write_tokenizer(staging)
    _write_weights(staging, tokenizer)
    (staging / "complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    log.info("embedded default model ready")
    return target


def _training_text() -> list[str]:
    """Python's own standard library sources: present on every machine that runs us."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts, size = [], 0
    for file in sorted(stdlib.glob("*.py")):
        text = file.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        size += len(text)
        if size > TRAINING_TEXT_BYTES:
            break
    # Some non-ASCII text, so the byte-level merges cover multi-byte characters too.
    texts.append("华盛顿是谁? 乔治·华盛顿是美国第一任总统。 Ünïcödé ✓ 日本語のテキスト。" * 50)
    return texts


def _write_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    log.info("training a %d-token byte-level BPE tokenizer", VOCAB_SIZE)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(TOOL_TAGS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_training_text(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|begin_of_text|>",
        eos_token="<|im_end|>",
        pad_token="<|end_of_text|>",
        additional_special_tokens=["<|im_start|>", "<|end_of_text|>"],
        model_max_length=CONTEXT,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(TOOL_TAGS)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return tokenizer


def _write_weights(directory: Path, tokenizer) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    log.info("writing random weights (seed 0)")
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=CONTEXT,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # The dtype vLLM loads a float32 checkpoint in on CPU and GPU alike, so it need not cast
        # (values equal to the cast ones: the float32 weights are drawn, then rounded the same way).
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32).to(torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)
    eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end_of_text|>")]
    generation = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))


if __name__ == "__main__":
    from common.config import load_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = load_server()
    print(ensure(sys.argv[1] if len(sys.argv) > 1 else server.path(server.data_dir)))

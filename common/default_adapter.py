"""A LoRA adapter for the embedded default model, generated with PEFT: rank 8 on q_proj and v_proj,
random weights, written deterministically beside the model in the data directory.

PEFT starts B at zero, which would leave the model as it is; here A and B are both drawn, and large
enough that greedy decoding with the adapter differs from the base model's. The adapter is nonsense,
as the model is, and makes LoRA's code paths real. `python -m common.default_adapter [DATA_DIR]`
writes it; it needs peft (requirements-test.txt).
"""
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from common import default_model

log = logging.getLogger(__name__)

NAME = "tiny-llama-lora"
RANK = 8
TARGET_MODULES = ["q_proj", "v_proj"]
WEIGHT_SCALE = 0.5


def path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / NAME


def ensure(data_dir: str | os.PathLike) -> Path:
    """Return the adapter's directory, generating it (and the model) first if they are not there yet."""
    target = path(data_dir)
    if (target / "complete").exists():
        return target
    model_dir = default_model.ensure(data_dir)
    log.info("generating the embedded LoRA adapter into %s (once)", target)
    staging = target.with_name(f"{NAME}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    _write_adapter(model_dir, staging)
    (staging / "complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _write_adapter(model_dir: Path, directory: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGET_MODULES, lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in sorted(model.named_parameters()):
            if "lora_" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * WEIGHT_SCALE)
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "README.md").unlink(missing_ok=True)  # PEFT's model card template
    # PEFT writes target_modules from a set, in an order that changes from run to run, and the
    # base model's path as given here.
    config_file = directory / "adapter_config.json"
    written = json.loads(config_file.read_text())
    written.update(target_modules=TARGET_MODULES, base_model_name_or_path=default_model.NAME)
    config_file.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    from common.config import load_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = load_server()
    print(ensure(sys.argv[1] if len(sys.argv) > 1 else server.path(server.data_dir)))

"""A simulated engine, for measuring a fleet without its GPUs: `engine_backend: simulated` in
inference.yml runs it behind the same engine worker instead of vLLM (docs/fleet.md, "The simulated
engine"). Nothing here imports vLLM or torch, so dozens of simulated engines fit on a small host."""
from pathlib import Path

from common.config import InferenceConfig
from common.step_time import load_profile
from engine_worker.simulator.engine import SimulatedEngine
from engine_worker.simulator.shape import engine_shape
from engine_worker.simulator.shared_gpu import shared_gpu
from engine_worker.simulator.vocabulary import read_vocabulary


def build_simulated_engine(model: str, inference: InferenceConfig, rank: int, stat_logger,
                           report_kv_events: bool, run_dir: Path) -> SimulatedEngine:
    """Engine `rank` of this host, shaped by inference.yml and its profile, emitting `model`'s tokens, taking
    turns (a lock file in `run_dir`) at a GPU that cuda_visible_devices gives it with others."""
    settings = inference.simulator
    profile = load_profile(settings.profile_path)
    vocabulary = read_vocabulary(model_files(model))
    shape = engine_shape(inference.engine_args, profile.engine_args, vocabulary.max_position_embeddings)
    return SimulatedEngine(shape, vocabulary, profile.step_time, settings.time_scale, settings.seed + rank,
                           settings.eos_probability, [stat_logger], report_kv_events, profile.served,
                           profile.prefix_cache_lookups == "every", shared_gpu(inference, rank, run_dir))


def model_files(model: str) -> Path:
    """The directory holding the model's config and tokenizer files: `model` itself, or for a hub id
    its JSON files, fetched into the Hugging Face cache as vLLM would fetch them (no weights)."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.json"]))

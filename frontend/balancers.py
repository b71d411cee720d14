"""The baselines the router's own policies are measured against, behind the same frontends
(router.policy "round_robin" and "vllm_dp"). Each picks a rank among `engines` (rank -> EngineLink,
those up that may take the request) and keeps its own state."""
import time


class RoundRobin:
    """Each engine in turn, in rank order, from this frontend's index on (Dynamo's and llm-d's
    round-robin baselines)."""

    def __init__(self, frontend_index: int):
        self.turn = frontend_index

    def pick(self, engines: dict) -> int:
        ranks = sorted(engines)
        rank = ranks[self.turn % len(ranks)]
        self.turn += 1
        return rank


class VllmDataParallel:
    """vLLM's own data-parallel balancer, as vllm/v1/engine/core_client.py does it in
    DPLBAsyncMPClient.get_core_engine_for_request (vLLM 0.26): the least of 4 × waiting + running per
    engine, from the engines' scheduler stats as vLLM's DPCoordinator last published them (at most every
    100 ms, DPCoordinatorProc's min_stats_update_interval_ms), each of this client's own sends since
    adding `frontends` (api_server_count) to its engine's waiting; ties go to the first engine scanned,
    the scan starting at frontend_index × engines / frontends and moving on one engine a pick. (vLLM
    0.32 scores max(frontends × in-flight, waiting + running) plus a KV-pressure term instead.)"""

    PUBLISH_INTERVAL_S = 0.1

    def __init__(self, engines: int, frontend_index: int, frontends: int):
        self.frontends = frontends
        self.start = engines * frontend_index // frontends
        self.counts: dict[int, list[int]] = {}  # rank -> [waiting, running]
        self.published_at = -self.PUBLISH_INTERVAL_S

    def pick(self, engines: dict) -> int:
        now = time.monotonic()
        if now - self.published_at >= self.PUBLISH_INTERVAL_S:  # a new snapshot replaces the counts
            self.counts = {rank: [engine.load_view.report.waiting, engine.load_view.report.running]
                           for rank, engine in engines.items()}
            self.published_at = now
        ranks = sorted(engines)
        best, best_score = ranks[0], None
        for offset in range(len(ranks)):
            rank = ranks[(self.start + offset) % len(ranks)]
            waiting, running = self.counts.setdefault(rank, [0, 0])
            score = 4 * waiting + running
            if best_score is None or score < best_score:
                best, best_score = rank, score
        self.counts[best][0] += self.frontends
        self.start = (self.start + 1) % len(ranks)
        return best

"""The client side of a simulated-fleet run: sessions of requests sent to POST /v1/completions at their
planned times, streamed, each one's timings kept.

Times are planned in simulated seconds and sent at time_scale x that many wall seconds, so the arrival
rates scale with the engines' steps. Prompts go as token ids (the frontends then tokenize nothing), and
the output is drawn from `allowed_token_ids` whose every token is text of its own, so the first chunk of
a stream is its first token.
"""
import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp

from bench.request_timings import RequestResult

PIN_HEADER = "X-data-parallel-rank"
CUT = "cut off at the run's end"


@dataclass
class Turn:
    prompt: list[int]
    max_tokens: int
    # Simulated seconds: for a session's first turn after the run's start, for the next ones after the
    # turn before ended (a user's think time).
    delay_s: float = 0.0
    tag: str = ""


@dataclass
class Session:
    """Requests sent one after another, each once the one before ended (a single request: one turn)."""
    turns: list[Turn]


@dataclass
class Outcome(RequestResult):
    tag: str = ""
    session: int = 0
    turn: int = 0
    planned_at: float = 0.0  # wall clock, when the request should have gone
    rank: int | None = None  # the engine it was pinned to, if it was
    chunks: int = 0


@dataclass
class Client:
    """Where and how the requests go; `pick` (bench/oracle.py's Oracle: start, place, first_token, ended,
    stop) chooses each request's engine instead of the frontends' routers."""
    urls: list[str]  # the service (nginx), or frontends to send to in turn
    model: str
    time_scale: float
    allowed_token_ids: list[int]
    pick: object = None
    timeout_s: float = 3600.0
    outcomes: list[Outcome] = field(default_factory=list)
    sent: int = 0

    def body(self, turn: Turn) -> dict:
        return {"model": self.model, "prompt": turn.prompt, "max_tokens": turn.max_tokens, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True},
                "allowed_token_ids": self.allowed_token_ids}

    async def run(self, sessions: list[Session], cut_at_s: float | None = None,
                  started: float | None = None) -> tuple[float, list[Outcome]]:
        """Send every session, the run starting at the wall clock `started` (perf_counter; soon, if not
        given); returns that start and every request's outcome. With
        `cut_at_s`, requests still running that many simulated seconds after the start are cut off (their
        streams closed, so the engines abort them) and end with the error CUT."""
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self.timeout_s)
        if self.pick is not None:
            await self.pick.start()
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                started = started or time.perf_counter() + 0.2  # time to set every session going
                sending = asyncio.gather(*(self.session(http, started, index, session)
                                           for index, session in enumerate(sessions)))
                limit = None if cut_at_s is None else started + cut_at_s * self.time_scale - time.perf_counter()
                try:
                    await asyncio.wait_for(sending, limit)
                except asyncio.TimeoutError:
                    for outcome in self.outcomes:
                        if outcome.end is None and outcome.error is None:
                            outcome.error = CUT
        finally:
            if self.pick is not None:
                await self.pick.stop()
        return started, self.outcomes

    async def session(self, http: aiohttp.ClientSession, started: float, index: int, session: Session) -> None:
        at = started
        for number, turn in enumerate(session.turns):
            at = (at if number else started) + turn.delay_s * self.time_scale
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            outcome = Outcome(start=time.perf_counter(), prompt_tokens=len(turn.prompt), tag=turn.tag, session=index,
                              turn=number, planned_at=at)
            self.outcomes.append(outcome)
            await self.send(http, turn, outcome)
            at = outcome.end or time.perf_counter()
            if not outcome.ok:
                return  # a session whose turn failed goes no further

    async def send(self, http: aiohttp.ClientSession, turn: Turn, outcome: Outcome) -> None:
        headers = {}
        if self.pick is not None:
            outcome.rank = self.pick.place(turn.prompt, turn.max_tokens)
            headers[PIN_HEADER] = str(outcome.rank)
        url = self.urls[self.sent % len(self.urls)]
        self.sent += 1
        try:
            async with http.post(url + "/v1/completions", json=self.body(turn), headers=headers) as response:
                if response.status != 200:
                    outcome.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                    return
                tail = await self.read_stream(response, outcome)
            outcome.end = time.perf_counter()
            self.read_usage(tail, outcome)
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            outcome.error = f"{type(error).__name__}: {error}"
        finally:
            if self.pick is not None:
                self.pick.ended(outcome.rank, turn.prompt, outcome)

    async def read_stream(self, response, outcome: Outcome) -> bytes:
        """Read to the end, noting the first token's arrival (and telling a pinning policy of it); returns
        the stream's last bytes, where the usage and any error are."""
        tail = b""
        async for chunk in response.content.iter_any():
            if outcome.first_token_at is None:
                outcome.first_token_at = time.perf_counter()
                if self.pick is not None:
                    self.pick.first_token(outcome.rank)
            outcome.chunks += 1
            tail = (tail + chunk)[-4096:]
        return tail

    @staticmethod
    def read_usage(tail: bytes, outcome: Outcome) -> None:
        events = [json.loads(line[6:]) for line in tail.split(b"\n") if line.startswith(b"data: {")]
        failure = next((event["error"] for event in events if "error" in event), None)
        if failure is not None:  # the usage chunk may still follow an error
            outcome.error = str(failure.get("message", failure))[:200]
        elif events and events[-1].get("usage"):
            outcome.output_tokens = events[-1]["usage"]["completion_tokens"]
        else:
            outcome.error = "the stream ended without its usage"


async def served_model(url: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/v1/models") as response:
            return (await response.json())["data"][0]["id"]

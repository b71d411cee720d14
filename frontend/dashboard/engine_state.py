"""Each engine's state as the dashboard shows it: starting, up, down or restarting.

Heartbeats alone say only "up" or "not up". supervisord knows more: whether the engine's program
is being started (STARTING, or BACKOFF after a start that failed), running, or given up on
(FATAL, STOPPED). A frontend asks it over its XML-RPC control socket, once a second and off the
event loop. Without supervisord (a frontend started on its own, or an engine on another host with
no program here) the state falls back to the heartbeats: up or down.
"""
import asyncio
import configparser
import logging
import time
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from supervisor.xmlrpc import SupervisorTransport

from common.messages import EngineLoad

log = logging.getLogger(__name__)

# Program states in which the engine is not there and no start is under way (EXITED only for a
# moment: supervisord restarts it).
PROGRAM_DOWN = {"STOPPED", "STOPPING", "EXITED", "FATAL", "UNKNOWN"}
# Past this age supervisord's answer says nothing (it hangs, or has gone): fall back to heartbeats.
PROGRAM_INFO_MAX_AGE_S = 5.0


class Program(NamedTuple):
    state: str  # supervisord's statename: STARTING, RUNNING, BACKOFF, STOPPED, EXITED, FATAL, ...
    pid: int


class EngineView(NamedTuple):
    """What a frontend knows of one engine: what /stats' engine entry and its state are made of."""
    model: str  # the served name of its pool's model
    rank: int
    programs: tuple[str, ...]  # supervisord program names it may run under; () for a remote engine
    engine_id: str | None
    fresh: bool  # welcomed, and its heartbeat is fresh
    load: EngineLoad


def engine_views(clients) -> list[EngineView]:
    """One view per engine of each pool's fleet; this host's engines have their supervisord program
    (`engine-<rank>`, or `engine-<model>-<rank>` with several models), an engine on another host none."""
    return [
        EngineView(client.model, link.rank, tuple(client.programs[link.rank:link.rank + 1]), link.engine_id,
                   link.heartbeat_fresh(), link.load)
        for client in clients for link in client.links
    ]


class EngineStateWatch:
    """One engine's state over time: "restarting" needs to remember that it had been up."""

    def __init__(self):
        self.was_up = False
        self.up_pid: int | None = None  # the process that was last seen up

    def state(self, program: Program | None, fresh: bool) -> str:
        if fresh:
            self.was_up = True
            # Not while STARTING: the heartbeats of a killed engine stay fresh for a moment after
            # supervisord has started its successor.
            if program and program.state == "RUNNING":
                self.up_pid = program.pid
            return "up"
        if program is None:
            return "down"
        if program.state in PROGRAM_DOWN:
            if program.state in ("FATAL", "STOPPED"):  # given up on: a later start is a new start
                self.was_up = False
            return "down"
        if not self.was_up:
            return "starting"
        if program.state == "RUNNING" and program.pid == self.up_pid:
            return "down"  # the process that served is still there but silent
        return "restarting"


def engine_entries(views: list[EngineView], programs: dict[str, Program] | None,
                   watches: dict[tuple[str, int], EngineStateWatch]) -> list[dict]:
    """/stats' `engines`: one entry per engine, pool by pool, by rank. `programs` is None without
    supervisord."""
    entries = []
    for view in views:
        program = next((programs[name] for name in view.programs if name in programs), None) if programs else None
        state = watches.setdefault((view.model, view.rank), EngineStateWatch()).state(program, view.fresh)
        entries.append({
            "model": view.model,
            "rank": view.rank,
            "state": state,
            "engine_id": view.engine_id,
            "program": program.state if program else None,
            "running": view.load.running if view.fresh else None,
            "waiting": view.load.waiting if view.fresh else None,
            "kv_cache_usage": view.load.kv_cache_usage if view.fresh else None,
        })
    return entries


class SupervisorPrograms:
    """supervisord's programs and their states, asked once a second on a thread of its own (an
    XML-RPC call that hangs holds that one thread, never the event loop or other work)."""

    def __init__(self, run_dir: Path):
        self.conf = run_dir / "supervisord.conf"
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="supervisor-rpc")
        self.programs: dict[str, Program] = {}
        self.asked_at = float("-inf")
        self.failing = False

    def latest(self) -> dict[str, Program] | None:
        """The last answer, or None when supervisord has not answered lately (or is not there)."""
        fresh = time.monotonic() - self.asked_at <= PROGRAM_INFO_MAX_AGE_S
        return self.programs if fresh else None

    async def refresh(self) -> None:
        try:
            programs = await asyncio.get_running_loop().run_in_executor(self.executor, self.ask)
        except (OSError, xmlrpc.client.Error, configparser.Error) as error:
            if not self.failing:  # without supervisord this fails every second: say it once
                log.info("no engine program states from supervisord (%s); the dashboard goes by heartbeats",
                         error)
            self.failing = True
            return
        if self.failing:
            log.info("engine program states from supervisord again")
        self.programs, self.asked_at, self.failing = programs, time.monotonic(), False

    def ask(self) -> dict[str, Program]:
        transport = self.transport()
        try:
            infos = xmlrpc.client.ServerProxy("http://localhost", transport=transport).supervisor.getAllProcessInfo()
        finally:
            transport.close()
        programs = {}
        for info in infos:
            program = Program(info["statename"], info["pid"])
            programs[info["name"]] = programs[f"{info['group']}:{info['name']}"] = program
        return programs

    def transport(self) -> SupervisorTransport:
        """Where supervisorctl would connect, with its credentials, from the rendered config."""
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        if not parser.read(self.conf):
            raise FileNotFoundError(f"{self.conf} is not there")
        section = parser["supervisorctl"] if parser.has_section("supervisorctl") else {}
        return SupervisorTransport(section.get("username"), section.get("password"),
                                   section.get("serverurl", f"unix://{self.conf.parent / 'supervisor.sock'}"))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

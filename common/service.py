"""The whole service under supervisord: `python -m common.service` checks the configuration,
renders conf/nginx.conf and conf/supervisord.conf into run_dir from conf/server.yml, starts
supervisord, starts nginx once every frontend listens, and prints the URL once the service answers.
Ctrl-C or SIGTERM drains and stops every process. `python -m common.service status|stop|restart-engines`
asks the supervisord of a running service (from another shell).

One service per run_dir: a lock on run_dir/service.lock, held by this process and supervisord for
their lives, makes a second start refuse before it touches anything."""
import argparse
import collections
import ctypes
import dataclasses
import fcntl
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import xmlrpc.client
from pathlib import Path
from string import Template

from common.config import ROOT, ServerConfig, load_inference, load_server
from common.logs import setup_logging
from common.preflight import StartRefused, check_exposure, check_inference
from common.rolling_restart import keep_served_inference, restart_engines

log = logging.getLogger("service")

LOG_TAIL_LINES = 30
PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 1.0
# An engine worker that ends sooner than this after its start has not started: supervisord's own bound
# (startretries) leaves it FATAL. Later crashes are EngineCrashes' to count.
ENGINE_STARTSECS = 30
# supervisord's line for a process that ended on its own: "exited: engine-0 (exit status 1; not expected)"
EXITED = re.compile(r"exited: (\S+) \((.*?)(?:; not expected|; expected)?\)$")
STOPPED = re.compile(r"stopped: (\S+) \(")
# supervisord's own INFO lines (spawned, success, an expected exit, a stop asked): read for the crash
# count, not shown; the processes' lines name their logger and pid ("INFO frontend[12]").
SUPERVISORD_INFO = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO (?!\S+\[\d+\] )")


def engine_programs(server: ServerConfig, values: dict) -> str:
    """One supervisord program per engine worker of this host: engine-0 ... engine-(N-1) for one model,
    engine-<served name>-<rank> for each model's pool when there are several."""
    if not server.local_engines:
        return ""
    template = Template((ROOT / "conf" / "supervisord-engine.conf").read_text())
    inference = load_inference()
    return "\n".join(template.substitute(values, program=inference.program(pool, rank), pool=pool, rank=rank)
                     for pool, config in enumerate(inference.pools) for rank in range(config.data_parallel_size))


def render(server: ServerConfig) -> Path:
    run_dir = server.path(server.run_dir)
    metrics_dir = fresh_metrics_dir(run_dir)
    for sub in ("nginx/body", "nginx/proxy", "nginx/fastcgi", "nginx/uwsgi", "nginx/scgi"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    debug = server.log_level.lower() == "debug"
    values = {
        "run_dir": run_dir,
        "root": ROOT,
        "python": sys.executable,
        "nginx": shutil.which("nginx") or "/usr/sbin/nginx",
        "server_config": Path(os.environ.get("SERVER_CONFIG") or ROOT / "conf/server.yml").resolve(),
        "inference_config": Path(os.environ.get("INFERENCE_CONFIG") or ROOT / "conf/inference.yml").resolve(),
        "frontends": server.frontends,
        # A host of engine workers only (frontends: 0) still needs a valid program section.
        "frontend_procs": max(server.frontends, 1),
        "frontend_autostart": "true" if server.frontends else "false",
        "metrics_dir": metrics_dir,
        "host": server.host,
        "port": server.port,
        "max_body_bytes": server.max_body_bytes,
        "user_directive": "user root;" if os.geteuid() == 0 else "",
        "upstream_servers": "\n".join(
            f"        server 127.0.0.1:{server.frontend_base_port + i} max_fails=0;" for i in range(server.frontends)
        ),
        # Operations the service runs itself; the rest of the log is the processes' own.
        "supervisord_user": "user=root" if os.geteuid() == 0 else "",
        "supervisord_log_level": "debug" if debug else "info",  # info: every end of a run, for EngineCrashes
        "nginx_log_level": "info" if debug else "warn",
        "supervisor_password": secrets.token_hex(16),
        "frontend_stopwaitsecs": int(server.drain_timeout_s) + 10,
        "engine_startsecs": ENGINE_STARTSECS,
        "limit_conn": f"limit_conn per_client {server.max_connections_per_client};"
        if server.max_connections_per_client else "",
    }
    values["engine_programs"] = engine_programs(server, values)
    for name in ("nginx.conf", "supervisord.conf"):
        text = Template((ROOT / "conf" / name).read_text()).substitute(values)
        target = run_dir / name
        target.touch(mode=0o600)  # supervisord.conf holds the control socket's password
        target.write_text(text)
    keep_served_inference(run_dir)  # what a rolling restart tells changes of (common/rolling_restart.py)
    return run_dir / "supervisord.conf"


def fresh_metrics_dir(run_dir: Path) -> Path:
    """The frontends' and the engine's shared Prometheus files; a new service counts from zero."""
    metrics_dir = run_dir / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    return metrics_dir


def lock_run_dir(server: ServerConfig) -> int:
    """Hold run_dir/service.lock, or refuse, naming the service that holds it."""
    run_dir = server.path(server.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / "service.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another service"
        os.close(fd)
        raise StartRefused(
            f"a service already runs in {run_dir}: {holder}. Stop it first (make stop, or "
            "`python -m common.service stop`), or give this one another run_dir in server.yml"
        ) from None
    describe(fd, f"service pid {os.getpid()}, serving on {public_url(server)}")
    return fd


def describe(lock_fd: int, holder: str) -> None:
    """What a refused second start tells about this one."""
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{holder}\n".encode(), 0)


def public_url(server: ServerConfig) -> str:
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::") else server.host
    return f"http://{host}:{server.port}"


def control(server: ServerConfig):
    """supervisord's XML-RPC interface over its unix socket in run_dir."""
    from supervisor.xmlrpc import SupervisorTransport

    run_dir = server.path(server.run_dir)
    conf = (run_dir / "supervisord.conf").read_text()
    password = next(line.split("=", 1)[1] for line in conf.splitlines() if line.startswith("password="))
    transport = SupervisorTransport("supervisor", password.strip(), f"unix://{run_dir}/supervisor.sock")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def answers(url: str) -> int | None:
    """The status of url/health, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def listens(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Supervisord:
    """supervisord in its own process group, so a terminal's Ctrl-C reaches only us and the stop is
    the ordered drain; its output passes through us, keeping the last lines for error messages."""

    def __init__(self, conf: Path, lock_fd: int, show_info: bool = False):
        self.show_info = show_info  # supervisord's own INFO lines, shown at log_level debug
        self.tail = collections.deque(maxlen=LOG_TAIL_LINES)
        self.exits: dict[str, str] = {}  # program -> how it last ended on its own, as supervisord said
        self.ends: dict[str, RunEnd] = {}  # program -> its runs ended so far, and whether the last crashed
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(lock_fd,), preexec_fn=own_group,
        )
        self.copier = threading.Thread(target=self.copy_output, daemon=True)
        self.copier.start()

    def copy_output(self) -> None:
        for line in self.process.stdout:
            text = line.decode(errors="replace").rstrip()
            self.note_end(text)
            if SUPERVISORD_INFO.match(text) and not self.show_info:
                continue
            try:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            except OSError:  # our terminal is gone: keep draining, or supervisord would block
                pass
            self.tail.append(text)

    def note_end(self, text: str) -> None:
        """A run ended: on its own (a crash, or exit status 0: a drain), or at a stop asked of supervisord."""
        if exited := EXITED.search(text):
            name, how = exited.groups()
            self.exits[name] = how
            crashed = not how.startswith("exit status 0")
        elif stopped := STOPPED.search(text):
            name, crashed = stopped.group(1), False
        else:
            return
        self.ends[name] = RunEnd(self.ends.get(name, RunEnd()).count + 1, crashed)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        code = self.process.wait()
        self.copier.join(timeout=5)
        return code


def own_group() -> None:
    """supervisord leads its own process group, and (Linux) gets SIGTERM, an ordered stop, if this
    process dies without stopping it."""
    os.setpgid(0, 0)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def engines_running(server: ServerConfig) -> bool:
    try:
        engines = [info for info in control(server).getAllProcessInfo() if info["name"].startswith("engine-")]
    except (OSError, xmlrpc.client.Error):
        return False
    return bool(engines) and all(info["statename"] == "RUNNING" for info in engines)


@dataclasses.dataclass(frozen=True)
class RunEnd:
    count: int = 0  # runs of the program ended so far
    crashed: bool = True  # the last one: neither a stop asked nor a drain (exit status 0)


class EngineCrashes:
    """Each local engine worker's crashes in a row, from supervisord's process table: a run that ended
    without a stop being asked, past startsecs and within window_s of its start, is one more; a longer
    run starts again from zero. Past startsecs supervisord restarts a worker forever; this is the bound."""

    def __init__(self, limit: int, window_s: float, startsecs: float = ENGINE_STARTSECS):
        self.limit, self.window_s, self.startsecs = limit, window_s, startsecs
        self.runs: dict[str, tuple[int, int]] = {}  # program -> (start, stop) as last seen
        self.in_a_row: collections.Counter = collections.Counter()
        self.ends_seen: collections.Counter = collections.Counter()

    def limit_reached(self, info: dict, end: RunEnd = RunEnd()) -> bool:
        """`end`: the program's ends as supervisord's log lines told them. The table cannot say why a
        run ended: once the program runs again it shows exit status 0 whatever ended the last run."""
        name, start, stop = info["name"], info["start"], info["stop"]
        last_start, last_stop = self.runs.get(name, (start, stop))
        if stop == last_stop:
            self.runs[name] = (start, stop)
            return False
        if info["statename"] not in ("STOPPING", "STOPPED") and end.count <= self.ends_seen[name]:
            return False  # supervisord's line for this end is not read yet: the next look decides
        self.runs[name], self.ends_seen[name] = (start, stop), end.count
        if info["statename"] in ("STOPPING", "STOPPED") or not end.crashed:
            return False
        started = last_start  # the run that ended is the one seen last (supervisord may have started the next)
        if stop - started >= self.window_s:
            self.in_a_row[name] = 0
        elif stop - started >= self.startsecs:
            self.in_a_row[name] += 1
        return 0 < self.limit <= self.in_a_row[name]


def failure(server: ServerConfig, supervisord: Supervisord, crashes: EngineCrashes) -> str | None:
    """Why the service must end, if it must: a process left FATAL (it could not start), or an
    engine worker past its crash limit (a slow start that then fails counts here too)."""
    try:
        processes = control(server).getAllProcessInfo()
    except (OSError, xmlrpc.client.Error):
        return None  # supervisord is starting or ending
    for info in processes:
        name = info["name"]
        if info["statename"] == "FATAL":
            return f"{name} could not start ({info['spawnerr'] or info['description']})"
        if name.startswith("engine-") and crashes.limit_reached(info, supervisord.ends.get(name, RunEnd())):
            stop_quietly(server, name)
            return (f"{name} crashed {crashes.in_a_row[name]} times in a row, each within "
                    f"{server.engine_crash_window_s:g} s of its start (last: {supervisord.exits.get(name, '?')}); "
                    f"not restarting it again. Its log: this service's output above; its exits: "
                    f"{server.path(server.run_dir) / 'supervisord.log'}")
    return None


def stop_quietly(server: ServerConfig, name: str) -> None:
    """Stop one program, so supervisord starts it no more while the rest of the service stops."""
    try:
        control(server).stopProcess(name, False)
    except (OSError, xmlrpc.client.Error):
        pass


def start(server: ServerConfig, supervisord: Supervisord, crashes: EngineCrashes) -> bool:
    """Wait for every frontend to listen, start nginx, wait for /health through it. False when
    supervisord ended or a process could not start (the reason is printed)."""
    ports = [server.frontend_base_port + i for i in range(server.frontends)]
    url = public_url(server)
    nginx_started = server.reuse_port
    while supervisord.alive():
        if reason := failure(server, supervisord, crashes):
            print(f"error: {reason}", file=sys.stderr)
            return failed(supervisord)
        if not server.frontends:  # a host of engine workers only: no frontend, no nginx
            if engines_running(server):
                print("\n  engine workers running (no frontends on this host; Ctrl-C or `make stop` stops)\n",
                      flush=True)
                return True
            time.sleep(1)
            continue
        if not nginx_started and all(listens(port) for port in ports):
            # Only now: nginx asked before a frontend listens only fills its error log.
            try:
                control(server).startProcess("nginx")
            except xmlrpc.client.Fault as fault:
                print(f"error: nginx could not start ({fault.faultString})", file=sys.stderr)
                return failed(supervisord)
            except OSError:  # supervisord went while nginx started: a stop, asked for meanwhile
                return False
            log.info("nginx ready on %s:%d", server.host, server.port)
            nginx_started = True
        if nginx_started and answers(url) == 200:
            print(f"\n  serving on {url}  (POST /generate, dashboard at /, GET /metrics; "
                  "Ctrl-C or `make stop` stops)\n", flush=True)
            return True
        time.sleep(1)
    return False


def watch(server: ServerConfig, supervisord: Supervisord, crashes: EngineCrashes,
          stop_requested: threading.Event) -> str | None:
    """While the service runs: why it must end, or None once it stops as asked."""
    while supervisord.alive() and not stop_requested.is_set():
        if reason := failure(server, supervisord, crashes):
            return reason
        time.sleep(WATCH_INTERVAL_S)
    return None


def failed(supervisord: Supervisord) -> bool:
    time.sleep(0.5)  # the last lines of the failed process, still in the pipe
    print("the service's last log lines:\n  " + "\n  ".join(supervisord.tail), file=sys.stderr, flush=True)
    return False


def serve() -> int:
    server = load_server()
    setup_logging(server.log_level, server.log_format)
    try:
        check_exposure(server)
        check_inference(server, load_inference())
        lock_fd = lock_run_dir(server)  # before anything in run_dir changes
    except StartRefused as refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 1
    supervisord = Supervisord(render(server), lock_fd, show_info=server.log_level.lower() == "debug")
    describe(lock_fd, f"service pid {os.getpid()} (supervisord pid {supervisord.process.pid}), "
                      f"serving on {public_url(server)}")
    stop_requested = threading.Event()

    def on_signal(signum, frame):
        stop_requested.set()
        supervisord.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    crashes = EngineCrashes(server.engine_crash_limit, server.engine_crash_window_s)
    if not start(server, supervisord, crashes) and not stop_requested.is_set():
        supervisord.stop()
        supervisord.wait()
        return 1
    if reason := watch(server, supervisord, crashes, stop_requested):
        tail = list(supervisord.tail)
        supervisord.stop()
        supervisord.wait()
        print("the service's last log lines before it stopped:\n  " + "\n  ".join(tail), file=sys.stderr)
        print(f"error: {reason}", file=sys.stderr, flush=True)
        return 1
    code = supervisord.wait()  # 0 after `make stop` (supervisorctl shutdown) too
    return 0 if stop_requested.is_set() else code


def held_lock(run_dir: Path) -> int | None:
    """A descriptor of run_dir's lock while a service holds it, else None."""
    try:
        fd = os.open(run_dir / "service.lock", os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return fd
    os.close(fd)
    return None


def ask(server: ServerConfig, command: str, timeout_s: float = 900) -> int:
    """`status`, `stop`, `reload` or `restart-engines` (each engine given timeout_s to serve again) on
    the service running in run_dir, through its supervisord."""
    run_dir = server.path(server.run_dir)
    lock = held_lock(run_dir)
    if lock is None:
        print(f"no service runs in {run_dir}", file=sys.stderr)
        return 1
    if command == "restart-engines":
        os.close(lock)
        return restart_engines(server, control(server), timeout_s)
    supervisorctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(run_dir / "supervisord.conf")]
    if command == "status":
        code = subprocess.run([*supervisorctl, "status"]).returncode
        return 0 if code in (0, 3) else code  # 3: some process is not running; the table says which
    if command == "reload":  # the frontends read their tenants again (docs/tenants.md)
        return subprocess.run([*supervisorctl, "signal", "HUP", "frontend:*"]).returncode
    # shutdown stops the programs in order (frontends drain, then nginx, then the engine) and
    # supervisord exits; the lock is free once this service and its supervisord have ended.
    code = subprocess.run([*supervisorctl, "shutdown"]).returncode
    if code:
        return code
    fcntl.flock(lock, fcntl.LOCK_SH)
    print("stopped")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m common.service")
    parser.add_argument("command", nargs="?", default="serve",
                        choices=["serve", "status", "stop", "reload", "restart-engines"])
    parser.add_argument("--timeout", type=float, default=900,
                        help="restart-engines: seconds each engine may take to serve again")
    args = parser.parse_args()
    return serve() if args.command == "serve" else ask(load_server(), args.command, args.timeout)


if __name__ == "__main__":
    sys.exit(main())

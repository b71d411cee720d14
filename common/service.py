"""The whole service under supervisord: `python -m common.service` renders conf/nginx.conf and
conf/supervisord.conf into run_dir from conf/server.yml, starts supervisord in the foreground,
and prints the URL once the service answers. Ctrl-C or SIGTERM stops every process."""
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from string import Template

from common.config import ROOT, ServerConfig, load_inference, load_server


def engine_programs(server: ServerConfig, values: dict) -> str:
    """One supervisord program per engine worker of this host: engine-0 ... engine-(N-1)."""
    if not server.local_engines:
        return ""
    template = Template((ROOT / "conf" / "supervisord-engine.conf").read_text())
    return "\n".join(template.substitute(values, rank=rank) for rank in range(load_inference().data_parallel_size))


def render(server: ServerConfig) -> Path:
    run_dir = server.path(server.run_dir)
    metrics_dir = fresh_metrics_dir(run_dir)
    for sub in ("nginx/body", "nginx/proxy", "nginx/fastcgi", "nginx/uwsgi", "nginx/scgi"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
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
        "nginx_autostart": "false" if server.reuse_port or not server.frontends else "true",
        "user_directive": "user root;" if os.geteuid() == 0 else "",
        "upstream_servers": "\n".join(
            f"        server 127.0.0.1:{server.frontend_base_port + i} max_fails=0;" for i in range(server.frontends)
        ),
    }
    values["engine_programs"] = engine_programs(server, values)
    for name in ("nginx.conf", "supervisord.conf"):
        text = Template((ROOT / "conf" / name).read_text()).substitute(values)
        (run_dir / name).write_text(text)
    return run_dir / "supervisord.conf"


def fresh_metrics_dir(run_dir: Path) -> Path:
    """The frontends' and the engine's shared Prometheus files; a new service counts from zero."""
    metrics_dir = run_dir / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    return metrics_dir


def wait_until_healthy(url: str, supervisord: subprocess.Popen) -> bool:
    while supervisord.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(1)
    return False


def main() -> int:
    server = load_server()
    conf = render(server)
    supervisord = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)])
    signal.signal(signal.SIGTERM, lambda signum, frame: supervisord.terminate())
    url = f"http://{server.host}:{server.port}"
    try:
        # A frontend first: asking nginx before any frontend listens only fills its error log.
        first_frontend = f"http://127.0.0.1:{server.frontend_base_port}"
        serving = server.frontends and wait_until_healthy(first_frontend, supervisord)
        if serving and wait_until_healthy(url, supervisord):
            print(f"\n  serving on {url}  (POST /generate, dashboard at /, GET /metrics; Ctrl-C stops)\n", flush=True)
        return supervisord.wait()
    except KeyboardInterrupt:
        # In a terminal supervisord got the same Ctrl-C; elsewhere only we did.
        supervisord.terminate()
        return supervisord.wait()


if __name__ == "__main__":
    sys.exit(main())

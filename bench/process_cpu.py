"""CPU time a server's processes spent during a load, by role, per output token.

Reads user + system seconds of every process under the server (psutil) before and after a load;
the difference over the load's output tokens is the CPU each role paid per token: our frontends and
engine worker, `vllm serve`'s API processes, and the engine core that both have.
"""
import psutil

ROLES = (
    ("engine core", lambda name, cmd: "EngineCore" in name or "EngineCore" in cmd),
    ("frontend", lambda name, cmd: "-m frontend" in cmd or "--frontend" in cmd),
    ("vllm api", lambda name, cmd: "vllm_cli.py serve" in cmd or "vllm serve" in cmd or "request_trace serve" in cmd
     or "APIServer" in name + cmd),
    # the engine program, ours or a bench experiment standing in for it (bench/service_with_engine.py)
    ("engine worker", lambda name, cmd: "-m engine_worker" in cmd or "-m bench.experiments" in cmd),
)


def role_of(process: psutil.Process) -> str:
    try:
        name, cmd = process.name(), " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    return next((role for role, matches in ROLES if matches(name, cmd)), "other")


def snapshot(processes: list[psutil.Process]) -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds so far)."""
    seen = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        seen[process.pid] = (role_of(process), times.user + times.system)
    return seen


def per_token_us(before: dict, after: dict, output_tokens: int) -> dict[str, float]:
    """µs of CPU per output token by role, over the processes alive at both ends of the load."""
    spent: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        if pid in before:
            spent[role] = spent.get(role, 0.0) + seconds - before[pid][1]
    return {role: round(seconds * 1e6 / output_tokens, 1) for role, seconds in spent.items() if output_tokens}

"""vLLM's engine core and workers are child processes. When the engine worker is killed outright
(SIGKILL, OOM) they outlive it, holding memory and the GPU. supervisord starts each program as a
process-group leader, so the next engine worker kills what is left of the previous one's group."""
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)


def reap_previous_engine(run_dir: Path, rank: int = 0) -> None:
    record = run_dir / ("engine.pgid" if rank == 0 else f"engine-{rank}.pgid")
    if record.exists():
        old_group = int(record.read_text())
        left = [pid for pid in group_members(old_group) if is_ours(pid)]
        if left:
            log.warning("killing %d processes left by the previous engine (group %d)", len(left), old_group)
            for pid in left:
                with_gone_ok(os.kill, pid, signal.SIGKILL)
        record.unlink()
    if os.getpgid(0) == os.getpid():  # only a group leader's group is ours alone to clean up
        record.write_text(str(os.getpid()))


def group_members(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if os.getpgid(int(entry.name)) == group:
                    members.append(int(entry.name))
            except OSError:
                pass
    return members


def is_ours(pid: int) -> bool:
    """A reused group id must not make us kill a stranger: check that it is vLLM or us."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"VLLM" in command or b"engine_worker" in command or b"multiprocessing" in command


def with_gone_ok(function, *args) -> None:
    try:
        function(*args)
    except ProcessLookupError:
        pass

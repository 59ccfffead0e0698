"""The install hints errors and ``localaug doctor`` give, worded once: they must work whether
localaug came from a package index (or a wheel) or from a checkout of its source.

``LLAMA_CPP_PYTHON`` is the llama-cpp-python release localaug is built and tested against; it is
pinned in pyproject.toml too (tests/test_cli_help.py checks that the two agree)."""

from __future__ import annotations

LLAMA_CPP_PYTHON = "0.3.36"

# the CMake switch of each GPU backend llama.cpp can be built with
GPU_BUILD_FLAGS = {"cuda": "-DGGML_CUDA=on", "metal": "-DGGML_METAL=on"}


def extra_hint(extra: str) -> str:
    """How to add an optional part of localaug (``report``, ``parquet``, ``ray``)."""
    return f"pip install 'localaug[{extra}]' (or pip install -e '.[{extra}]' from a checkout)"


def gpu_hint(device: str) -> str:
    """How to rebuild llama.cpp with a GPU backend, at the release localaug is tested against."""
    flag = GPU_BUILD_FLAGS.get(device, GPU_BUILD_FLAGS["cuda"])
    return f'CMAKE_ARGS="{flag}" pip install --force-reinstall --no-cache-dir "llama-cpp-python=={LLAMA_CPP_PYTHON}"'

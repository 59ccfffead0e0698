"""``localaug doctor``: facts about this installation (the llama.cpp build, its backends, cores,
memory, the store), as typed values: counts and bytes are numbers, switches are booleans, keys are
snake_case (the terminal table words them for people)."""

from __future__ import annotations

import os
from typing import Any


def doctor() -> dict[str, Any]:
    """Facts about this installation: the llama.cpp build, its backends, threads, memory, the store."""
    from localaug._version import __version__
    from localaug.core.install import LLAMA_CPP_PYTHON
    from localaug.runtime.llama import gpu_offload_supported, llama_cpp_version, system_info
    from localaug.store import local as store

    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    entries = store.list_entries()
    gpu = gpu_offload_supported()
    return {
        "localaug": __version__,
        "llama_cpp_python": llama_cpp_version(),
        "llama_cpp_python_supported": LLAMA_CPP_PYTHON,  # the release localaug is tested against
        "gpu_offload": gpu,
        "default_device": "gpu" if gpu else "cpu",  # a GPU build offloads every layer by default
        "llama_cpp_features": system_info(),
        "cpu_cores": os.cpu_count(),
        "memory_bytes": pages * page_size,
        "store": str(store.root()),
        "models_in_store": len(entries),
        "store_bytes": sum(e.size for e in entries),
    }

"""``localaug doctor``: facts about this installation (the llama.cpp build, its backends, cores,
memory, the store)."""

from __future__ import annotations

import os
from typing import Any


def doctor() -> dict[str, Any]:
    """Facts about this installation: the llama.cpp build, its backends, threads, memory, the store."""
    from localaug import __version__
    from localaug.runtime.llama import gpu_offload_supported, llama_cpp_version, system_info
    from localaug.store import local as store

    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    info = system_info()
    entries = store.list_entries()
    return {
        "localaug": __version__,
        "llama-cpp-python": llama_cpp_version(),
        "gpu offload": "yes" if gpu_offload_supported() else "no (CPU build; see README for CUDA/Metal)",
        "default device": "gpu (all layers)" if gpu_offload_supported() else "cpu",
        "llama.cpp features": info,
        "cpu cores": os.cpu_count(),
        "memory": f"{pages * page_size / 2**30:.1f} GiB",
        "store": str(store.root()),
        "models in store": len(entries),
        "store size": f"{sum(e.size for e in entries) / 2**30:.2f} GiB",
    }

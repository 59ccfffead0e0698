"""What localaug reads of llama.cpp itself (localaug/runtime/llama.py): its version, GPU support,
system line and log level, pinned against the installed package and by hand. Fast: no model."""

from __future__ import annotations

import logging
from importlib.metadata import version

import llama_cpp as L
import pytest

from localaug.runtime import llama


def test_the_version_is_the_installed_packages():
    assert llama.llama_cpp_version() == version("llama_cpp_python") == "0.3.36"


@pytest.mark.parametrize("supported", [0, 1, True, False])
def test_gpu_offload_is_what_the_library_says_as_a_bool(monkeypatch, supported):
    # this machine's build has no GPU: the library's answer is stood in for both ways
    monkeypatch.setattr(L, "llama_supports_gpu_offload", lambda: supported)
    assert llama.gpu_offload_supported() is bool(supported)


def test_the_system_line_is_decoded_leniently_and_stripped(monkeypatch):
    monkeypatch.setattr(L, "llama_print_system_info", lambda: b" CPU : AVX = 1 | \xff\xe4\xbd\xa0 \n")
    assert llama.system_info() == "CPU : AVX = 1 | \ufffd\u4f60"


def test_the_real_system_line_is_text():
    info = llama.system_info()
    assert isinstance(info, str) and info and info == info.strip() and "CPU" in info


def test_llama_cpp_pythons_log_is_silenced_unless_asked():
    log, root = logging.getLogger("llama-cpp-python"), logging.getLogger()
    level, root_level = log.level, root.level
    try:
        log.setLevel(logging.NOTSET)
        llama.quiet_llama(False)
        assert log.level == logging.CRITICAL
        log.setLevel(logging.NOTSET)
        llama.quiet_llama(True)
        assert log.level == logging.DEBUG and root.level == root_level  # that logger alone
    finally:
        log.setLevel(level)
        root.setLevel(root_level)

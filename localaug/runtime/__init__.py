"""llama.cpp: the single-sequence engine, continuous batching behind one public interface, and
speed measurements."""

DEVICES = ("auto", "cpu", "cuda", "metal")  # where a model runs (``EngineOptions.device``)

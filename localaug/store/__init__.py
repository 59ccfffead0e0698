"""Where models live: the local store, the Hugging Face hub, bundles, Ollama Modelfiles and GGUF
metadata."""

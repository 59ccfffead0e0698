"""GGUF metadata keys that localaug writes besides gguf-py's own (``gguf.Keys``)."""


class LocalaugKeys:
    SOURCE_REPO = "localaug.source.repo"  # the Hugging Face repo a GGUF was converted from
    SOURCE_REVISION = "localaug.source.revision"  # the commit (or revision) of that repo
    VERSION = "localaug.version"  # the localaug that wrote the file

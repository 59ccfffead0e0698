"""Model bundles: one tar archive that carries stored models into another store (an air-gapped one).

Layout (an uncompressed POSIX tar; GGUF weights do not compress)::

    localaug-bundle.json              first member: the bundle manifest (below)
    models/<safe-name>/<QUANT>.gguf   one regular file per stored GGUF, laid out as in the store

The bundle manifest holds, per model, its store name, its family entry (repo, revision, task,
prompt format) when it is a family model, and the store manifest record of every file: sha256,
size, quant, source (repo + revision + commit, or checkpoint folder), license, creation time.

``exporting`` writes a bundle, ``importing`` checks one and lands it in the store, all or nothing;
``archive`` holds what both agree on (member names, the manifest's name and format).

The checksums prove the files are the ones the exporting store held (no corruption in transit);
they do not authenticate who made the bundle: import bundles from people you trust.
"""

from __future__ import annotations

from localaug.store.bundle.archive import BUNDLE_FORMAT, BUNDLE_MANIFEST, member_name
from localaug.store.bundle.exporting import ExportResult, export_bundle
from localaug.store.bundle.importing import BundleFile, ImportResult, import_bundle

__all__ = [
    "BUNDLE_FORMAT", "BUNDLE_MANIFEST", "BundleFile", "ExportResult", "ImportResult", "export_bundle", "import_bundle",
    "member_name",
]

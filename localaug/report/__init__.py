"""See what augmentation did: ``localaug report`` (a self-contained HTML page and PNG figures from a
job's records) and ``localaug judge`` (pairwise LLM-as-judge win rates over two response files)."""

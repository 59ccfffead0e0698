"""Dataset jobs: row keys, the per-batch worker, one run skeleton for one machine and for Ray, the
ledger, inputs and outputs, merging. Ray is imported by ``on_ray`` only."""

DEDUP_MODES = ("row", "exact", "minhash")  # duplicates across a job's rows: none, exact, near (MinHash)
MERGE_DEDUP = ("none", "exact", "minhash")  # duplicates across merged outputs
PREFERENCE_RULES = ("scores", "pairwise")  # how preference pairs are chosen from judged answers (preference.py)

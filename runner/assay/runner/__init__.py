"""Runners: ppl (one worker's shards), cmp (merge and score), local (a whole job on this machine).

``python -m assay.runner ppl|cmp`` is the pod entrypoint.
"""

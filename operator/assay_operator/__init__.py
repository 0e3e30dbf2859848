"""assay's Kubernetes operator: reconciles EvaluationJobs into a ppl Indexed Job and a cmp Job.

Run it with ``kopf run -m assay_operator.main`` (or ``python -m assay_operator``).
"""

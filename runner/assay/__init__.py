"""assay: evaluate machine-learning models on large datasets, locally or on Kubernetes.

Importing this package is cheap on purpose: it must not pull in torch or a Kubernetes client.
"""

__version__ = "0.1.0"

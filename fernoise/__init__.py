"""fernoise: facial expression recognition under noisy labels.

Stages: ``align`` (photos -> aligned crops + Parquet manifest), ``corrupt`` (exact,
reproducible label noise), ``train`` (NCCTFER and baselines), ``evaluate``.
"""

__version__ = "0.1.0"

"""Label-issue audit of a manifest, and the manifest it cleans (torch-free package).

- :mod:`.folds`: the K cross-fitting folds of the training rows, one manifest per fold.
- :mod:`.score`: out-of-sample probabilities -> label quality, issues, suggested labels
  (cleanlab), and how good they are against a known truth.
- :mod:`.aum`: the area under the margin of one training run (``--scorer aum``).
- :mod:`.stage`: ``fernoise audit``: folds -> one cached train + eval run each -> scores ->
  ``audits/<key>/`` (``audit.parquet``, ``audit.json``, the joint, the gallery).
- :mod:`.gallery`: the audit's pictures and its one-file HTML page.
- :mod:`.clean`: ``fernoise clean``: an audit -> a new manifest with rows dropped or
  relabelled.
"""

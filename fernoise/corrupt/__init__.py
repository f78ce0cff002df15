"""`fernoise corrupt`: the noise kinds on a DataFrame (:mod:`.kinds`) and the stage over a manifest
(:mod:`.stage`).

Imports nothing: importing the package never imports torch (``fernoise --help``, cache hits).
"""

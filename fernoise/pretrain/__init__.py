"""`fernoise pretrain`: the self-supervised stage (:mod:`.stage`) and its face-safe views (:mod:`.ssl`).

Imports nothing: importing the package never imports torch (``fernoise --help``, cache hits).
"""

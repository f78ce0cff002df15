"""`fernoise demo`: the synthetic-faces drawing (:mod:`.synthetic`) and the demo pipeline (:mod:`.stage`).

Imports nothing: importing the package never imports torch (``fernoise --help``, cache hits).
"""

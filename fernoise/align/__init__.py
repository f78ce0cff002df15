"""`fernoise align`: face detection (:mod:`.detect`), crop geometry and :class:`~fernoise.align.faces.AlignParams`
(:mod:`.faces`), and the stage over a folder of photos (:mod:`.stage`).

Imports nothing: importing the package never imports torch (``fernoise --help``, cache hits).
"""

"""`fernoise eval`: the stage and its metrics (:mod:`.stage`), the run-folder readers (:mod:`.runs`),
the pictures (:mod:`.plots`) and Grad-CAM (:mod:`.gradcam`).

Imports nothing: importing the package never imports torch (``fernoise --help``, cache hits).
"""

"""`fernoise train`: its parameters and version (:mod:`.config`, torch-free), the stage and the
loop (:mod:`.stage`), the device-side views (:mod:`.augment`) and the pretrained-weights
loader (:mod:`.weights`).

Imports nothing: importing the package never imports torch (``fernoise --help``, cache hits).
"""

"""`fernoise sweep`: the grid file and its cells (:mod:`.grid`), checking and running them
(:mod:`.runner`), and one cell's child process (:mod:`.cell`).

Imports nothing: importing the package never imports torch (``fernoise --help``, cache hits).
"""

"""The training core: where the suite runs (:mod:`~utils.core.runtime`), the one training loop
(:mod:`~utils.core.engine`, with its time budget and checkpoints), runs that are found again and recorded
(:mod:`~utils.core.runs`), in-memory batches and their augmentation, and ``torchrun`` support."""

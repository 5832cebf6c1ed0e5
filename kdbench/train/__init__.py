"""Training: the one loop (:mod:`.loop`), its compute settings, DDP, launch, checkpoints and the teacher cache."""

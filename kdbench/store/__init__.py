"""The results store: one directory per run (:mod:`kdbench.store.run_dir`)."""

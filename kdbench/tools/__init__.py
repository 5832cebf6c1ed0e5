"""Tools around the pipeline: `kdbench bench`, `fidelity`, `doctor` and the cost estimate."""

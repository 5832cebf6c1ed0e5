"""Tools that drive the pipeline to measure it: `kdbench bench`, `fidelity` and `doctor`."""

"""Recipe files of the example plugin (entry point ``kdbench.recipes: example``)."""

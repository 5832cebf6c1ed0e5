"""Example kdbench plugin (tests/plugin_example): a method, a network and a recipe from outside kdbench."""

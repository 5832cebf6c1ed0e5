"""``python -m kdbench``: the same CLI as the ``kdbench`` command (used by the executors)."""

from kdbench.cli import app

app(prog_name="kdbench")

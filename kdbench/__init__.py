"""kdbench: reproduce knowledge-distillation papers' result tables end to end."""

__version__ = "0.1.0"

"""The local backend: a run DAG on this machine's GPU (or CPU) slots."""

from kdbench.execute.local.executor import LocalExecutor

__all__ = ["LocalExecutor"]

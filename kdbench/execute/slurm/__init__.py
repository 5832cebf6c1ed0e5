"""The SLURM backend: a run DAG submitted as jobs through submitit."""

from kdbench.execute.slurm.executor import SlurmExecutor, SlurmOptions

__all__ = ["SlurmExecutor", "SlurmOptions"]

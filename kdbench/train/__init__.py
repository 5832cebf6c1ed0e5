"""Training: ``run(spec, results, options)`` trains one RunSpec into its run directory.

The loop (:mod:`.loop`) runs a run's stages (:mod:`.stages`) from its inputs (:mod:`.sources`) with its
options (:mod:`.options`: device, loader, compute, loggers, ...); beside it are the compute settings
(:mod:`.compute`), DDP (:mod:`.distributed`, :mod:`.launch`), imported checkpoints (:mod:`.checkpoints`)
and the teacher cache (:mod:`.teacher_cache`). Callers use the names below; tests of internals import
the module that defines them.
"""

from kdbench.train.compute import ComputeOptions
from kdbench.train.loop import TrainingDiverged, evaluate, resolve_device, run
from kdbench.train.options import RunOptions
from kdbench.train.sources import load_spec, load_trained_model

__all__ = [
    "ComputeOptions",
    "RunOptions",
    "TrainingDiverged",
    "evaluate",
    "load_spec",
    "load_trained_model",
    "resolve_device",
    "run",
]

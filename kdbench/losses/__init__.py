"""Every distillation loss as a pure function of tensors.

Each function reproduces the loss of the authors' released code on the same inputs (cited per
function; ``docs/references.md``): which T² factors are included and
what is averaged over what. Teacher tensors are detached inside, so callers may pass them as is.
The functions live in one module per family (each lists its functions in ``__all__``) and are
all importable from ``kdbench.losses``. Every one of them is decorated with ``precision.fp32``: it
upcasts bf16/fp16 inputs and computes in float32 with autocast off, whatever autocast its caller
runs the networks under.
"""

from kdbench.losses.contrastive import *  # noqa: F401,F403
from kdbench.losses.feature import *  # noqa: F401,F403
from kdbench.losses.logit import *  # noqa: F401,F403
from kdbench.losses.relation import *  # noqa: F401,F403

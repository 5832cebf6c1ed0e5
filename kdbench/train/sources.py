"""Where a run's inputs come from: its spec, the trained weights of the runs it builds on, its dataset."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kdbench import data, methods, models
from kdbench.data.identity import verify_content
from kdbench.errors import KdbenchError
from kdbench.io import read_json
from kdbench.models.base import KDModel
from kdbench.plan import RunSpec
from kdbench.store.run_dir import RUN_ID, RunDir

log = logging.getLogger(__name__)


def load_spec(path_or_id: str, results: Path) -> RunSpec:
    """A spec from a ``spec.json`` path, or from a run id inside ``results``."""
    path = Path(path_or_id)
    if not path.is_file() and RUN_ID.fullmatch(path_or_id):
        path = RunDir(
            results, path_or_id
        ).spec_file  # a run id never names a path outside results/runs
    if not path.is_file():
        raise KdbenchError(
            f"no spec at {path_or_id!r}: pass a spec.json file or the id of a run under {results}/runs/ "
            f"(`kdbench status --results {results}` lists them)."
        )
    try:
        return RunSpec.model_validate(
            read_json(path) if path != Path(path_or_id) else _user_json(path)
        )
    except ValidationError as exc:
        raise KdbenchError(
            f"{path} is not a valid run spec ({exc.error_count()} problem(s), first: "
            f"{'.'.join(map(str, exc.errors()[0]['loc']))}: {exc.errors()[0]['msg']}). Pass a spec.json "
            "written by kdbench (RESULTS/runs/<run id>/spec.json)."
        ) from None


def _user_json(path: Path) -> Any:
    """A file the user named as a spec: one that is not JSON (a README, a checkpoint) is not a spec, not a corrupted
    file to delete (what :func:`read_json` says of the store's own files)."""
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise KdbenchError(
            f"{path} is not a run spec (not JSON: {exc}). Pass a spec.json written by kdbench "
            "(RESULTS/runs/<run id>/spec.json) or a run id."
        ) from None


def load_trained_model(results: Path, run_id: str, model_name: str, num_classes: int) -> KDModel:
    """The network trained by run ``run_id``, loaded with ``weights_only=True``: the weights the run keeps for its
    students (its spec's ``keep``: the last epoch's ``model.pt``, or the best epoch's ``model_best.pt``)."""
    run = RunDir(results, run_id)
    if not run.is_done():
        raise KdbenchError(
            f"teacher run {run_id} has not finished: train it first (kdbench train {run.spec_file})."
        )
    keep = (
        RunSpec.model_validate(read_json(run.spec_file)).keep if run.spec_file.is_file() else "last"
    )
    state = run.load_torch(run.best_model_file if keep == "best" else run.model_file)
    model = models.create(model_name, num_classes=num_classes)
    model.load_state_dict(
        {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    )
    return model


def start_from(distiller: methods.Distiller, results: Path, run_id: str) -> None:
    """Load the final weights of run ``run_id`` into the modules of ``distiller`` that share their names."""
    run = RunDir(results, run_id)
    if not run.is_done():
        raise KdbenchError(
            f"run {run_id}, which this run starts from, has not finished: train it first."
        )
    state = run.load_torch(run.model_file)
    own = distiller.state_dict()
    shared = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not shared:
        raise KdbenchError(
            f"run {run_id}'s weights share no module with method {distiller.name!r}: nothing to start from."
        )
    distiller.load_state_dict(shared, strict=False)
    log.info("started from run %s (%d of %d tensors)", run_id, len(shared), len(own))


def dataset(spec: RunSpec, data_dir: str | Path | None) -> data.Dataset:
    """The spec's dataset (its content verified when the spec pins it), subset to its fractions."""
    if spec.data.content is not None:
        verify_content(spec.data.name, spec.data.options, data_dir, spec.data.content)
    arrays = data.load_dataset(spec.data.name, data_dir, **spec.data.options)
    if spec.data.train_fraction < 1 or spec.data.test_fraction < 1:
        arrays = data.subset(arrays, spec.data.train_fraction, spec.data.test_fraction)
    return arrays

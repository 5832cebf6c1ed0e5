"""SimKD sequential training (Table 4): starts from the SimKD run, encoder frozen, new classifier trained."""

from __future__ import annotations

import pytest
import torch
import yaml
from kdbench import train
from kdbench.errors import KdbenchError
from kdbench.plan import plan
from kdbench.recipe import Recipe
from kdbench.store.run_dir import RunDir
from kdbench.train.options import RunOptions

RECIPE = {
    "name": "tiny-sequential",
    "paper": "test",
    "table": "T4",
    "title": "sequential",
    "source": "test",
    "protocol": {"name": "test", "follows": "test"},
    "dataset": {
        "name": "synthetic",
        "options": {"num_classes": 4, "image_size": 16, "train_size": 32, "test_size": 16},
    },
    "training": {"epochs": 2, "batch_size": 16, "lr": 0.05, "milestones": [1]},
    "trials": 1,
    "teachers": {"t": {"model": "resnet8", "label": "T"}},
    "columns": [{"id": "c", "teacher": "t", "student": "resnet8", "label": "S"}],
    "rows": [
        {"label": "SimKD", "method": "simkd"},
        {"label": "Sequential", "method": "simkd-sequential", "after": "SimKD"},
    ],
}


def test_sequential_row_starts_from_the_simkd_run_and_keeps_its_encoder(tmp_path):
    p = plan(Recipe.model_validate(RECIPE), "full")
    order = p.ordered()
    teacher, simkd, sequential = order
    assert sequential.init_from.run_id == simkd.run_id and sequential.dependencies == [
        teacher.run_id,
        simkd.run_id,
    ]
    for spec in order:
        train.run(spec, tmp_path, RunOptions(device="cpu"), show_progress=False)
    simkd_state = torch.load(RunDir(tmp_path, simkd.run_id).model_file, weights_only=True)
    seq_state = torch.load(RunDir(tmp_path, sequential.run_id).model_file, weights_only=True)
    for (
        key,
        value,
    ) in simkd_state.items():  # student and projector: unchanged, BN statistics included
        assert torch.equal(seq_state[key], value), key
    assert "new_classifier.weight" in seq_state
    simkd_last = RunDir(tmp_path, simkd.run_id).read_metrics()[-1]
    for epoch in RunDir(tmp_path, sequential.run_id).read_metrics():
        assert epoch.test["teacher_classifier"].top1 == simkd_last.test_top1
        assert set(epoch.losses) == {"ce_new_classifier"}


def test_after_must_name_an_earlier_row():
    bad = yaml.safe_load(yaml.safe_dump(RECIPE))
    bad["rows"][1]["after"] = "SimKd"
    with pytest.raises(KdbenchError, match="must name an earlier row.*Did you mean 'SimKD'"):
        plan(Recipe.model_validate(bad), "full")

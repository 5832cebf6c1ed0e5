"""A dataset's identity in the run id is its content: rebuilding data.npz with other images gives new runs.

Before, the run id hashed only the npz file's path, so finished runs were reused for other data.
"""

from __future__ import annotations

import numpy as np
import pytest
from kdbench.data import identity
from kdbench.data.identity import content_digest, verify_content
from kdbench.errors import KdbenchError
from kdbench.plan import identified, plan
from kdbench.recipe import Recipe

RECIPE = {
    "name": "npz-table",
    "paper": "test",
    "table": "T",
    "title": "t",
    "source": "test",
    "protocol": {"name": "test", "follows": "test"},
    "dataset": {"name": "npz", "options": {"path": "data.npz", "num_classes": 10}},
    "training": {"epochs": 4, "batch_size": 16, "lr": 0.05, "milestones": [2]},
    "trials": 1,
    "teachers": {"t": {"model": "resnet20", "label": "ResNet-20"}},
    "columns": [{"id": "a", "teacher": "t", "student": "resnet8", "label": "ResNet-8"}],
    "rows": [{"label": "KD", "method": "kd"}],
}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def write_npz(path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.arange(n) % 10, x_test=x[:16], y_test=np.arange(16) % 10)


def run_ids(data_dir, profile="full") -> set[str]:
    return set(plan(identified(Recipe.model_validate(RECIPE), data_dir), profile).specs)


def test_rebuilding_the_npz_with_other_images_changes_every_run_id(tmp_path):
    seen = []
    for n in (128, 512, 2048):
        write_npz(tmp_path / "data.npz", n)
        seen.append(run_ids(tmp_path))
        assert run_ids(tmp_path) == seen[-1]  # the same data: the same runs
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1 :])
    write_npz(tmp_path / "data.npz", 128)
    assert run_ids(tmp_path) == seen[0]  # back to the first data: its runs again


def test_the_ci_profile_hashes_the_content_too(tmp_path):
    write_npz(tmp_path / "data.npz", 128)
    first = run_ids(tmp_path, "ci")
    write_npz(tmp_path / "data.npz", 128, seed=1)  # same size and shape, other pixels
    assert not first & run_ids(tmp_path, "ci")


def test_datasets_named_by_their_content_keep_their_run_ids(tmp_path):
    cifar = {**RECIPE, "dataset": {"name": "cifar100"}}
    recipe = Recipe.model_validate(cifar)
    assert (
        identified(recipe, tmp_path) is recipe
    )  # official md5-checked files: the name is the content
    assert all(s.data.content is None for s in plan(recipe).specs.values())


def test_the_digest_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    write_npz(tmp_path / "data.npz", 128)
    calls = []
    real = identity.file_sha256
    monkeypatch.setattr(identity, "file_sha256", lambda f: calls.append(f) or real(f))
    first = content_digest("npz", {"path": "data.npz"}, tmp_path)
    assert content_digest("npz", {"path": "data.npz"}, tmp_path) == first and len(calls) == 1
    write_npz(tmp_path / "data.npz", 256)
    assert content_digest("npz", {"path": "data.npz"}, tmp_path) != first and len(calls) == 2
    (tmp_path / "cache" / "kdbench" / "digests.json").write_text(
        "{damaged"
    )  # a damaged cache costs a re-hash
    assert content_digest("npz", {"path": "data.npz"}, tmp_path) != first and len(calls) == 3


def test_a_run_refuses_data_that_changed_after_it_was_planned(tmp_path):
    write_npz(tmp_path / "data.npz", 128)
    (spec, *_) = plan(identified(Recipe.model_validate(RECIPE), tmp_path)).specs.values()
    verify_content("npz", spec.data.options, tmp_path, spec.data.content)
    write_npz(tmp_path / "data.npz", 512)
    with pytest.raises(KdbenchError, match="has changed since this run was planned"):
        verify_content("npz", spec.data.options, tmp_path, spec.data.content)


def test_a_pinned_recipe_refuses_other_data(tmp_path):
    write_npz(tmp_path / "data.npz", 128)
    pin = content_digest("npz", {"path": "data.npz"}, tmp_path)
    pinned = Recipe.model_validate({**RECIPE, "dataset": {**RECIPE["dataset"], "content": pin}})
    assert identified(pinned, tmp_path).dataset.content == pin
    write_npz(tmp_path / "data.npz", 512)
    with pytest.raises(KdbenchError, match="dataset.content pins"):
        identified(pinned, tmp_path)


def test_an_image_folder_is_identified_by_its_manifest(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "imagenet" / split / "n01").mkdir(parents=True)
        (tmp_path / "imagenet" / split / "n01" / "a.JPEG").write_bytes(b"x" * 10)
    first = content_digest("imagenet", {}, tmp_path)
    (tmp_path / "imagenet" / "train" / "n01" / "b.JPEG").write_bytes(b"y" * 10)
    assert content_digest("imagenet", {}, tmp_path) not in (None, first)
    assert (
        content_digest("imagenet", {}, tmp_path / "elsewhere") is None
    )  # absent: the loader explains

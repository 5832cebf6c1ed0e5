"""Every output format of a comparison, byte for byte: Markdown, LaTeX, HTML, CSV, the terminal at several widths
(plain and styled), `compare --format table -o`, and the `kdbench report` page. The tables are planted here and cover
the cases the renderers tell apart: reproduced / above / below / inconclusive verdicts, absent, not implemented, not
run, failed and partial cells, unverified trials, mixed precision, an imported teacher, a row and columns that read
another epoch than the title, per-cell quantities (measured and computed), evaluation-head columns and the profile
notes. The expected outputs are under tests/golden/render/; after an intended change of an output, rewrite them with
``KDBENCH_WRITE_GOLDEN=1 pytest tests/test_render.py`` and review the diff. The last tests check the long
format of a narrow terminal and the LaTeX conventions on tests/test_report.py's planted table."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from kdbench.io import atomic_write_json
from kdbench.plan import plan
from kdbench.recipe import Recipe
from kdbench.results import render
from kdbench.results.compare import TableComparison, compare
from kdbench.results.report import write_report
from kdbench.results.tables import record_table
from kdbench.store.records import EpochRecord, RunResult
from kdbench.store.run_dir import RunDir
from rich.console import Console

from test_report import _widest, plant_with_curves

GOLDEN = Path(__file__).resolve().parent / "golden" / "render"
WRITE = os.environ.get("KDBENCH_WRITE_GOLDEN") == "1"

TRAINING = {"epochs": 240, "batch_size": 64, "lr": 0.05, "milestones": [150, 180, 210]}
HEAD = {
    "source": "test",
    "protocol": {"name": "test", "follows": "test"},
    "dataset": {"name": "cifar100"},
    "training": TRAINING,
}

# Verdicts, statuses and marks: two trained teachers and an imported one.
VERDICTS = Recipe.model_validate(
    {
        **HEAD,
        "name": "verdicts",
        "paper": "Verdicts: a test paper",
        "table": "Table V",
        "title": "every kind of cell",
        "trials": 4,
        "paper_trials": 4,
        "teachers": {
            "t": {"model": "resnet32x4", "label": "ResNet-32x4", "paper": 79.42},
            "w": {
                "model": "wrn_40_2",
                "label": "WRN-40-2",
                "checkpoint": {"path": "teachers/wrn.pth", "sha256": "0123456789abcdef"},
            },
        },
        "columns": [
            {"id": "a", "teacher": "t", "student": "resnet8x4", "label": "ResNet-8x4"},
            {"id": "b", "teacher": "t", "student": "resnet20", "label": "ResNet-20"},
            {"id": "w", "teacher": "w", "student": "wrn_16_2", "label": "WRN-16-2"},
        ],
        "rows": [
            {
                "label": "Student",
                "method": "ce",
                "paper": {"a": "70.00 ± 0.20", "b": "70.00 ± 0.20", "w": "73.26 ± 0.18"},
            },
            {
                "label": "KD",
                "method": "kd",
                "literature": "Hinton et al.",
                "metric": "last",
                "paper": {"a": "72.00 ± 0.30", "b": 71.0, "w": 74.92},
            },
            {"label": "DIST-KL", "method": "dist-kl", "paper": {"a": 72.5}},
            {"label": "FitNet", "method": "fitnet", "paper": {"a": 70.5, "b": 69.2}},
            {"label": "Teacher", "method": "teacher", "paper": {"b": 79.42}},
        ],
    }
)
# (row, column) → per trial: best top-1, or "failed", or (best top-1, precision), or (best top-1, None): unverified.
VERDICT_TRIALS = {
    ("Student", "a"): [70.1, 69.9, 70.0, 70.2],  # reproduced
    ("Student", "b"): [75.0, 75.5, 75.2, 74.9],  # above
    ("Student", "w"): [(73.3, "bf16"), (73.1, "faithful"), (73.4, "bf16"), (73.2, "bf16")],
    ("KD", "a"): [68.0, 68.2, 67.9, 68.1],  # below, at the last epoch
    ("KD", "b"): [71.3],  # one trial of four: inconclusive
    ("KD", "w"): [(74.6, None), 74.9, 75.1, "failed"],  # one unverified, one failed
    ("FitNet", "a"): ["failed", "failed", "failed", "failed"],
    ("FitNet", "b"): [69.6, 69.7, 69.65, 69.62],  # reproduced, yet significantly above
    ("Teacher", "a"): [79.0],
    ("Teacher", "w"): [75.6],  # the imported teacher: no published number
}

# Quantities, head columns, rows that keep to their own columns (absent cells): SimKD's S.4/S.8 shape.
LAYOUTS = Recipe.model_validate(
    {
        **HEAD,
        "name": "layouts",
        "paper": "Layouts: a test paper",
        "table": "Table L",
        "title": "layouts",
        "training": {**TRAINING, "lr_by_model": {"simkd/resnet8x4": 0.02}},
        "trials": 2,
        "paper_trials": 4,
        "teachers": {"t": {"model": "simkd/resnet32x4", "label": "ResNet-32x4", "paper": 79.42}},
        "columns": [
            {
                "id": "sc",
                "teacher": "t",
                "student": "simkd/resnet8x4",
                "label": "ResNet-8x4 · student",
                "head": "student_classifier",
            },
            {
                "id": "tc",
                "teacher": "t",
                "student": "simkd/resnet8x4",
                "label": "ResNet-8x4 · teacher",
                "head": "teacher_classifier",
            },
        ],
        "quantities": [
            {
                "id": "l2",
                "label": "test ℓ2",
                "source": "test_loss",
                "term": "simkd",
                "margin": 0.01,
            },
            {"id": "cost", "label": "pruning cost %", "source": "pruning_cost"},
            {"id": "ratio", "label": "projector %", "source": "added_params_ratio"},
        ],
        "rows": [
            {"label": "KD", "method": "kd", "columns": ["sc"], "paper": {"sc": "74.42 ± 0.05"}},
            {
                "label": "Joint",
                "method": "simkd",
                "params": {"ce_weight": 0.5, "kd_weight": 0.5, "weight": 0.5},
                "paper": {"sc": "74.00 ± 0.10", "tc": "73.90 ± 0.10"},
                "paper_quantities": {
                    "tc": {"l2": "0.300 ± 0.001", "cost": "2.88", "ratio": "17.34"}
                },
            },
            {"label": "Slow", "method": "kd", "columns": ["sc"], "training": {"lr": 0.001}},
            {"label": "Teacher", "method": "teacher", "columns": ["tc"]},
        ],
    }
)

# Columns that read another epoch than the title (SimKD Table 3), under the smoke profile's note.
EPOCHS_LAYOUT = {
    **HEAD,
    "name": "epochs",
    "paper": "Epochs: a test paper",
    "table": "Table E",
    "title": "mid-training columns",
    "trials": 2,
    "paper_trials": 4,
    "teachers": {"t": {"model": "resnet32x4", "label": "ResNet-32x4"}},
    "columns": [
        {
            "id": "at",
            "teacher": "t",
            "student": "resnet8x4",
            "label": "1/4, at",
            "at_epoch": 60,
            "metric": "last",
        },
        {"id": "upto", "teacher": "t", "student": "resnet8x4", "label": "1/4", "at_epoch": 60},
        {"id": "full", "teacher": "t", "student": "resnet8x4", "label": "full"},
    ],
    "rows": [
        {
            "label": "KD",
            "method": "kd",
            "paper": {"at": "60.10 ± 0.50", "upto": 65.0, "full": "72.00 ± 0.40"},
        },
        {"label": "Teacher", "method": "teacher"},
    ],
}
EPOCHS = Recipe.model_validate(EPOCHS_LAYOUT)
# The same runs under a last-epoch title: the column that reads the best epoch up to 60 says so.
EPOCHS_LAST = Recipe.model_validate(
    {
        **EPOCHS_LAYOUT,
        "name": "epochs-last",
        "metric": "last",
        "columns": [
            {**c, "metric": "best"}
            if c["id"] == "upto"
            else {k: v for k, v in c.items() if k != "metric"}
            for c in EPOCHS_LAYOUT["columns"]
        ],
    }
)


def _write_run(results: Path, spec, result: dict, *, verified: bool = True) -> None:
    run = RunDir(results, spec.run_id)
    atomic_write_json(run.spec_file, spec.model_dump(mode="json"))
    if verified:
        run.write_result(RunResult.from_json(result))  # checksummed, as the trainer writes it
    else:
        atomic_write_json(run.result_file, result)  # no checksum: shown unverified


def _result(best: float, **extra) -> dict:
    return {
        "best_top1": best,
        "best_top5": 99.0,
        "best_epoch": 200,
        "last_top1": best - 0.1,
        "last_top5": 99.0,
        "epochs": 240,
        **extra,
    }


def _curve(best: float, k: int) -> list[dict]:
    return [
        {
            "epoch": e,
            "test_top1": round(best - 30.0 * (1 - e / 240) ** (2 + k / 4), 4),
            "test_top5": 99.0,
        }
        for e in range(1, 241)
    ]


def plant_verdicts(results: Path) -> None:
    p = plan(VERDICTS, "full")
    record_table(results, VERDICTS, "full", p.trials, {})
    cells = {(c.row, c.column): c for c in p.cells}
    for key, trials in VERDICT_TRIALS.items():
        for k, (run_id, trial) in enumerate(zip(cells[key].run_ids, trials)):
            spec = p.specs[run_id]
            if trial == "failed":
                run = RunDir(results, run_id)
                atomic_write_json(run.spec_file, spec.model_dump(mode="json"))
                atomic_write_json(
                    run.failed_file, {"run_id": run_id, "error": "RuntimeError", "message": "boom"}
                )
                continue
            best, precision = trial if isinstance(trial, tuple) else (trial, "bf16")
            extra = {"compute": {"precision": precision or "bf16"}}
            _write_run(results, spec, _result(best, **extra), verified=precision is not None)
            RunDir(results, run_id).write_metrics(
                [EpochRecord.from_json(h) for h in _curve(best, k)]
            )


def plant_layouts(results: Path) -> None:
    p = plan(LAYOUTS, "full")
    record_table(results, LAYOUTS, "full", p.trials, {})
    cells = {(c.row, c.column): c for c in p.cells}
    for run_id, (main, own, l2) in zip(
        cells[("Joint", "tc")].run_ids, [(73.8, 74.1, 0.30), (74.0, 73.9, 0.302)]
    ):
        heads = {"student_classifier": {"best_top1": own, "last_top1": own - 1}}
        losses = {"simkd": {"best": l2, "last": l2 + 0.01}}
        _write_run(results, p.specs[run_id], _result(main, heads=heads, test_losses=losses))
    for run_id in cells[("KD", "sc")].run_ids:
        _write_run(results, p.specs[run_id], _result(74.4))


def plant_epochs(results: Path, recipe: Recipe = EPOCHS) -> None:
    p = plan(recipe, "smoke")
    record_table(results, recipe, "smoke", p.trials, {})
    cells = {(c.row, c.column): c for c in p.cells}
    spec = p.specs[cells[("KD", "at")].run_ids[0]]
    epochs = spec.train.epochs
    for k, run_id in enumerate(cells[("KD", "at")].run_ids):
        curve = [
            {"epoch": e, "test_top1": 50.0 + k + (e == epochs) * 20 + e / 100, "test_top5": 90.0}
            for e in range(1, epochs + 1)
        ]
        _write_run(results, p.specs[run_id], _result(70.0 + k + epochs / 100, epochs=epochs))
        RunDir(results, run_id).write_metrics([EpochRecord.from_json(h) for h in curve])


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict[str, Path]:
    folders = {}
    for name, plant in (
        ("verdicts", plant_verdicts),
        ("layouts", plant_layouts),
        ("epochs", plant_epochs),
        ("epochs-last", lambda results: plant_epochs(results, EPOCHS_LAST)),
    ):
        folders[name] = tmp_path_factory.mktemp(name)
        plant(folders[name])
    return folders


# (golden name, planted folder, compare's keyword arguments)
CASES = [
    ("verdicts", "verdicts", {}),
    ("verdicts-margin", "verdicts", {"margin": 0.25}),
    ("verdicts-last", "verdicts", {"metric": "last", "alpha": 0.1}),
    ("layouts", "layouts", {}),
    ("layouts-last", "layouts", {"metric": "last"}),
    ("epochs", "epochs", {}),
    ("epochs-best", "epochs", {"metric": "best"}),
    ("epochs-last", "epochs-last", {}),
]


def _terminal(comp: TableComparison, width: int, styles: bool) -> str:
    console = Console(
        width=width, record=True, file=io.StringIO(), force_terminal=True, color_system="standard"
    )
    console.print(render.terminal(comp, width))
    return console.export_text(styles=styles)


def _plain_table(comp: TableComparison) -> str:
    """What `compare --format table -o FILE` writes (cli._plain_table)."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render.terminal(comp, 200))
    return console.export_text()


def _outputs(comp: TableComparison) -> dict[str, str]:
    outputs = {
        "md": render.to_markdown(comp),
        "tex": render.to_latex(comp),
        "html": render.to_html(comp),
        "csv": render.to_csv([comp]),
        "table.txt": _plain_table(comp),
    }
    for width in (24, 80, 120, 200):
        outputs[f"w{width}.txt"] = _terminal(comp, width, styles=False)
        outputs[f"w{width}.ansi"] = _terminal(comp, width, styles=True)
    return outputs


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if WRITE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} is missing: write it with KDBENCH_WRITE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{name} differs from {path}"


@pytest.mark.parametrize("name, folder, kwargs", CASES, ids=[c[0] for c in CASES])
def test_every_format_is_unchanged(planted, name, folder, kwargs):
    (comp,) = compare(planted[folder], **kwargs)
    for suffix, text in _outputs(comp).items():
        _check(f"{name}.{suffix}", text)


def test_csv_of_several_tables_is_unchanged(planted):
    comparisons = [c for folder in ("verdicts", "layouts") for c in compare(planted[folder])]
    _check("several.csv", render.to_csv(comparisons))


def _stable_page(page: str, results: Path) -> str:
    """The report page without what changes from run to run: the figures' bytes, the time and the folder."""
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,PNG", page)
    page = re.sub(r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC", "on DATE", page)
    return page.replace(str(results), "RESULTS").replace(render_version(), "VERSION")


def render_version() -> str:
    from kdbench import __version__

    return f"kdbench {__version__}"


@pytest.mark.parametrize("name, folder", [("verdicts", "verdicts"), ("layouts", "layouts")])
def test_the_report_page_is_unchanged(planted, tmp_path, name, folder):
    (comp,) = compare(planted[folder])
    page = write_report(comp, planted[folder], tmp_path / "report.html").read_text()
    _check(f"{name}.report.html", _stable_page(page, planted[folder]))


# --------------------------------------------------------------------------- narrow terminals, LaTeX


@pytest.fixture
def results(tmp_path) -> Path:
    plant_with_curves(tmp_path / "results")
    return tmp_path / "results"


def test_a_table_too_wide_for_the_compact_grid_falls_back_to_one_block_per_cell(results):
    (comp,) = compare(results)

    capture = Console(width=24, record=True, file=io.StringIO())
    capture.print(render.terminal(comp, 24))  # 'Student  70.05±0.13 +0.05 ✓' needs 27
    text = capture.export_text()
    assert _widest(text) <= 24 and "…" not in text and "method" not in text
    assert "KD × b (ResNet-32x4" in text and "▼ below [-4.30," in text


def test_latex_is_booktabs_with_n_and_verdict_marks(results):
    (comp,) = compare(results)
    latex = render.to_latex(comp)
    assert latex.startswith("% needs \\usepackage{booktabs}")
    assert all(rule in latex for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    assert (
        r"70.05$\pm$0.13$_{n=4}$ $\surd$" in latex
        and r"$\downarrow$" in latex
        and r"$\uparrow$" in latex
    )

"""``kdbench report RECIPE -o report.html``: one self-contained HTML page to send (inline CSS, figures as base64 PNG,
no external URL): the comparison table with verdict colours and the margin δ, the plot of ``results/plot.py``,
per-cell training curves (test top-1 per epoch, mean ± band over trials, best epoch marked), every run's provenance,
and the recipe's protocol notes."""

from __future__ import annotations

import base64
import html
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

from kdbench import __version__
from kdbench.errors import KdbenchError
from kdbench.plan import Plan, plan
from kdbench.results import render
from kdbench.results.collect import run_status
from kdbench.results.compare import TableComparison
from kdbench.results.tables import read_tables
from kdbench.store.records import MAIN_HEAD
from kdbench.store.run_dir import RunDir

STYLE = """
body { font: 14px/1.45 -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; color: #222; margin: 2em auto;
       max-width: 1400px; padding: 0 1.5em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; } .note { background: #fff4d6; border: 1px solid #e8c766; padding: .5em .8em; }
table { border-collapse: collapse; margin: .8em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: .35em .6em; vertical-align: top; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; white-space: nowrap; }
table.results td { text-align: right; min-width: 11em; }
td.reproduced { background: #e3f4e1; } td.above { background: #e1eef9; } td.below { background: #fbe3e1; }
td.inconclusive { background: #f7f7ef; } td.failed { background: #fbe3e1; color: #900; }
td.not-run, td.not-implemented, td.absent { color: #999; }
.v { font-weight: 600; } .reproduced .v { color: #1d6b1a; } .above .v { color: #17558a; } .below .v { color: #a21d12; }
.detail { color: #666; font-size: .85em; display: block; max-width: 22em; margin-left: auto; }
img { max-width: 100%; border: 1px solid #eee; } code { font-size: .92em; }
table.prov td, table.prov th { font-size: .86em; } .legend span { margin-right: 1.2em; }
"""


@dataclass(frozen=True)
class CellRuns:
    """A cell's finished runs' test top-1 per epoch (one list per trial)."""

    row: str
    column: str
    curves: list[list[tuple[int, float]]]


def write_report(comp: TableComparison, results: Path, path: Path) -> Path:
    """Write the page of ``comp`` (a table under ``results``) to ``path``."""
    found = _plan(results, comp)
    run_ids = {(c.row, c.column): c.run_ids for c in found.cells}
    wanted = set(zip(comp.cells["row"], comp.cells["column"]))
    cells = [
        _cell_runs(results, row, column, ids)
        for (row, column), ids in run_ids.items()
        if (row, column) in wanted
    ]
    page = _page(comp, results, found, [c for c in cells if c.curves])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _plan(results: Path, comp: TableComparison) -> Plan:
    """The table's plan as compare made it: from its record under ``tables/``, else from the recipe."""
    for record in read_tables(results):
        if record.recipe.name == comp.recipe.name and record.profile == comp.profile:
            return plan(
                record.recipe,
                record.profile,
                trials=record.trials,
                ci_overrides=record.ci_overrides,
            )
    return plan(comp.recipe, comp.profile)


def _cell_runs(results: Path, row: str, column: str, run_ids: tuple[str, ...]) -> CellRuns:
    curves = []
    for run_id in run_ids:
        run = RunDir(results, run_id)
        if run_status(run) != "done":
            continue
        try:
            history = run.read_metrics()
        except KdbenchError:  # corrupted: compare reports it; no curve is drawn from it
            continue
        points = [
            (h.epoch, h.test_top1) for h in history if h.phase != "init" and MAIN_HEAD in h.test
        ]
        if len(points) > 1:
            curves.append(points)
    return CellRuns(row, column, curves)


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return base64.b64encode(buffer.getvalue()).decode()


def _plot_png(comp: TableComparison, folder: Path) -> str:
    from kdbench.results.plot import plot

    path = plot([comp], folder / "plot.png")
    return base64.b64encode(path.read_bytes()).decode()


def _curves_png(comp: TableComparison, cells: list[CellRuns]) -> str:
    """Small multiples, one panel per cell: the mean test top-1 per epoch over trials, ± one std as a band, each
    trial's best epoch marked, and the published value as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n_cols = min(4, len(cells))
    n_rows = math.ceil(len(cells) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False, figsize=(3.4 * n_cols, 2.5 * n_rows))
    paper = {
        (r, c): m
        for r, c, m in zip(comp.cells["row"], comp.cells["column"], comp.cells["paper_mean"])
    }
    for ax, cell in zip(axes.flat, cells):
        epochs = sorted({e for curve in cell.curves for e, _ in curve})
        values = np.full((len(cell.curves), len(epochs)), np.nan)
        for i, curve in enumerate(cell.curves):
            for e, v in curve:
                values[i, epochs.index(e)] = v
        mean = np.nanmean(values, axis=0)
        ax.plot(epochs, mean, color="tab:blue", lw=1.2, label=f"mean of {len(cell.curves)}")
        if len(cell.curves) > 1:
            std = np.nanstd(values, axis=0, ddof=1)
            ax.fill_between(
                epochs, mean - std, mean + std, color="tab:blue", alpha=0.2, lw=0, label="± std"
            )
        for curve in cell.curves:
            best_epoch, best = max(curve, key=lambda p: p[1])
            ax.plot([best_epoch], [best], marker="*", color="tab:orange", ms=7, ls="")
        if not math.isnan(paper.get((cell.row, cell.column), math.nan)):
            ax.axhline(paper[(cell.row, cell.column)], color="0.3", ls="--", lw=0.8, label="paper")
        ax.set_title(f"{cell.row} × {cell.column}", fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.set_ylabel("test top-1 (%)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cells) :]:
        ax.set_visible(False)
    handles = [
        plt.Line2D([], [], color="tab:blue", label="mean over trials"),
        plt.Rectangle((0, 0), 1, 1, color="tab:blue", alpha=0.2, label="± std"),
        plt.Line2D([], [], marker="*", color="tab:orange", ls="", label="best epoch of a trial"),
        plt.Line2D([], [], color="0.3", ls="--", label="paper"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if n_rows > 1 else 0.1, 1, 1))
    encoded = _png(fig)
    plt.close(fig)
    return encoded


def _table_html(comp: TableComparison) -> str:
    return (
        '<table class="results">'
        + "\n".join(render.html_rows(render.grid(comp), page=True))
        + "</table>"
    )


def _provenance_html(results: Path, found: Plan, comp: TableComparison) -> str:
    """One row per planned run of the shown cells: where and how it ran (from its result.json)."""
    e = html.escape
    wanted = set(zip(comp.cells["row"], comp.cells["column"]))
    head = [
        "run id",
        "cell",
        "seed",
        "status",
        "kdbench",
        "git commit",
        "torch / CUDA",
        "device",
        "precision",
        "wall time",
        "GPU-hours",
    ]
    out = ['<table class="prov"><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    seen = set()
    total_gpu_hours = 0.0
    for cell in found.cells:
        if (cell.row, cell.column) not in wanted:
            continue
        for run_id in cell.run_ids:
            if run_id in seen:
                continue
            seen.add(run_id)
            run = RunDir(results, run_id)
            status = run_status(run)
            result = None
            if status == "done":
                try:
                    result = run.result()
                except KdbenchError:
                    status = "corrupted"
            seed = found.specs[run_id].seed
            torch_version = (result and result.torch_version) or "—"
            cuda = torch_version.split("+cu")[1] if "+cu" in torch_version else "—"
            device = (result and (result.device_name or result.device)) or "—"
            seconds = result.wall_seconds if result is not None else None
            on_gpu = (result and result.device or "").startswith("cuda")
            gpu_hours = (
                seconds * ((result and result.world_size) or 1) / 3600
                if seconds is not None and on_gpu
                else None
            )
            total_gpu_hours += gpu_hours or 0.0
            values = [
                f"<code>{e(run_id)}</code>",
                e(f"{cell.row} × {cell.column}"),
                str(seed),
                e(status),
                e((result and result.kdbench_version) or "—"),
                f"<code>{e((result and result.kdbench_commit) or '—')}</code>",
                e(f"{torch_version} / {cuda}"),
                e(str(device)),
                e((result and result.compute and result.compute.precision) or "—"),
                "—" if seconds is None else e(_duration(seconds)),
                "—" if gpu_hours is None else f"{gpu_hours:.2f}",
            ]
            out.append(
                "<tr>"
                + "".join(
                    f'<td class="num">{v}</td>' if i in (2, 9, 10) else f"<td>{v}</td>"
                    for i, v in enumerate(values)
                )
                + "</tr>"
            )
    out.append("</table>")
    return (
        f"<p>{len(seen)} runs; {total_gpu_hours:.2f} GPU-hours in all (wall time × GPUs of the runs trained on CUDA). "
        "CUDA: the build of torch (its +cuXXX suffix).</p>" + "\n".join(out)
    )


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _page(comp: TableComparison, results: Path, found: Plan, cells: list[CellRuns]) -> str:
    import tempfile

    e = html.escape
    r = comp.recipe
    with tempfile.TemporaryDirectory() as folder:
        plot = _plot_png(comp, Path(folder))
    note = render.PROFILE_NOTES[comp.profile]
    t = r.training
    protocol = [
        f"Protocol <b>{e(r.protocol.name)}</b> (follows {e(r.protocol.follows)})"
        + (f"; method preset <code>{e(r.protocol.preset)}</code>" if r.protocol.preset else "")
        + ".",
        e(r.protocol.notes) if r.protocol.notes else "",
        e(
            f"Training: {t.epochs} epochs, batch {t.batch_size}, lr {t.lr}, milestones {list(t.milestones)}; "
            f"dataset {r.dataset.name}; {found.trials} trial(s) per cell here, the paper's over {r.paper_trials}; "
            f"metric: {comp.metric} epoch."
        ),
        e(
            render.verdict_rule(comp)
            + f" (α = {comp.alpha:g}; interval level {100 * (1 - 2 * comp.alpha):g}%)."
        ),
        e(f"Recipe source: {r.source}."),
    ]
    curves = (
        f'<img alt="training curves" src="data:image/png;base64,{_curves_png(comp, cells)}">'
        if cells
        else "<p>No finished run with a per-epoch history yet.</p>"
    )
    legend = "".join(
        f'<span class="v">{e(render.VERDICT_MARKS[v])}</span>'
        for v in ("reproduced", "above", "below", "inconclusive")
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{e(r.name)}: {e(r.paper)} — {e(r.table)}</title>
<style>{STYLE}</style></head><body>
<h1>{e(r.name)}: {e(r.table)}</h1>
<p class="sub">{e(r.paper)}<br>{e(r.title)}</p>
{f'<p class="note">{e(note)}</p>' if note else ""}
<p><b>{e(render.summary_text(comp))}</b></p>
<p>Margin δ = <b>{comp.margin:g}</b> accuracy points; profile <code>{e(comp.profile)}</code>; {e(comp.metric)} epoch.
{e(render.verdict_rule(comp))}.</p>
<h2>Results: ours (mean ± std over trials, n) beside the published value</h2>
<p class="legend">{legend}</p>
{_table_html(comp)}
<h2>Ours against the published values</h2>
<p>Grey band: the published value ± δ; diamond: the paper (mean ± std); dot: ours (mean ± std), coloured by verdict.</p>
<img alt="comparison plot" src="data:image/png;base64,{plot}">
<h2>Training curves</h2>
<p>Test top-1 per epoch of each cell's finished trials: mean, ± one std band (two or more trials), each trial's best
epoch marked; the dashed line is the published value.</p>
{curves}
<h2>Provenance</h2>
{_provenance_html(results, found, comp)}
<h2>Protocol</h2>
{"".join(f"<p>{p}</p>" for p in protocol if p)}
<p class="sub">Written by kdbench {e(__version__)} on {e(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))} from
<code>{e(str(results))}</code>.</p>
</body></html>
"""

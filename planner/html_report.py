"""A study's report as one static HTML page (`planner report`): plots drawn with matplotlib
(Agg) and embedded as base64 PNGs, also written beside the page, and the tables. No network,
no script. Reads `views.report_data`."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.report import score_text
from planner.space import Plan

_LEGEND_ARMS = 6  # arms named in a stage's legend (the best-scoring); the rest drawn grey
_STYLE = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:24px auto;
max-width:1140px;color:#222;padding:0 16px}
h1{margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;margin-top:0}
.kpis{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.kpi{flex:1 1 0;border:1px solid #ddd;border-radius:6px;padding:6px 12px;white-space:nowrap}
.kpi b{display:block;font-size:1.25em}.kpi span{color:#666;font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:16px}.grid figure{flex:1 1 420px}figure{margin:0}
img{max-width:100%;height:auto;border:1px solid #eee}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
footer{margin-top:32px;color:#888;font-size:.85em}
"""


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or a one-line error saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise PlannerError("planner report draws with matplotlib, which is not installed; "
                           "pip install 'planner[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _best_so_far(plt: Any, data: dict, x_key: str, xlabel: str) -> Any:
    """Each evaluated trial's score and the best so far, against trials or search GPU-h."""
    curve, optimum = data["curve"], data["comparison"]["optimum"]
    x = [r["number"] + 1 if x_key == "trials" else r[x_key] for r in curve]
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    ok = [(xi, r["score"]) for xi, r in zip(x, curve, strict=True) if r["score"] is not None]
    if ok:
        ax.scatter(*zip(*ok, strict=True), s=14, color="#9bb7d4", label="trial", zorder=2)
    best = [(xi, r["best"]) for xi, r in zip(x, curve, strict=True) if r["best"] is not None]
    if best:
        ax.step(*zip(*best, strict=True), where="post", color="#1f5fa8", lw=2,
                label="best so far", zorder=3)
    if optimum is not None:
        ax.axhline(optimum, color="#c0392b", ls="--", lw=1.2,
                   label=f"exact optimum {optimum:.4g}")
    ax.set(xlabel=xlabel, ylabel="end score", ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _stage_curves(plt: Any, data: dict) -> Any:
    """One panel per stage: score against n for each arm explored, the best's arm bold."""
    stages = data["stage_curves"]
    best = data["best"]["allocation"] if data["best"] else {}
    cols = min(len(stages), 3)
    rows = -(-len(stages) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(min(11 / cols, 6.5) * cols, 4.4 * rows),
                             squeeze=False)
    for ax in axes.flat[len(stages):]:
        ax.set_visible(False)
    for ax, (stage, curve) in zip(axes.flat, stages.items(), strict=False):
        dim = curve["dimension"]
        chosen = Plan({k: v for k, v in best.get(stage, {}).items() if k != dim}).describe()
        ranked = sorted(curve["arms"].items(), key=lambda a: -max(s for _, s in a[1]))
        for rank, (arm, points) in enumerate(ranked):
            named = rank < _LEGEND_ARMS or arm == chosen
            ax.plot(*zip(*points, strict=True), marker="o", ms=7 if arm == chosen else 3,
                    lw=2.4 if arm == chosen else 1.2, alpha=1.0 if named else 0.35,
                    zorder=4 if arm == chosen else 3 if named else 2,
                    color=None if named else "#bbbbbb",
                    label=(arm + (" (best)" if arm == chosen else "")) if named else None)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set(title=stage, xlabel=dim, ylabel="stage score")
        ax.grid(alpha=0.3)
        if ranked:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                      frameon=False)
    fig.tight_layout()
    return fig


def _cost_split(plt: Any, data: dict) -> Any:
    """The best allocation's GPU-hours per stage: training and inference."""
    rows = data["choices"]
    stages = [r["stage"] for r in rows]
    train = [r["train_gpu_hours"] or 0.0 for r in rows]
    infer = [r["inference_gpu_hours"] or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(5.6, 0.9 + 0.55 * len(rows)))
    ax.barh(stages, train, color="#e67e22", label="training")
    ax.barh(stages, infer, left=train, color="#2e86c1", label="inference")
    ax.invert_yaxis()
    ax.set(xlabel="estimated GPU-hours")
    ax.legend(fontsize=8, ncol=2, frameon=False, loc="lower center",
              bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    return fig


def figures(data: dict) -> dict[str, Any]:
    """The report's plots by file stem; the best's plots only when a trial succeeded."""
    plt = _pyplot()
    figs = {"best_vs_trials": _best_so_far(plt, data, "trials", "trials"),
            "best_vs_search_gpu_hours": _best_so_far(plt, data, "search_gpu_hours",
                                                     "search GPU-hours")}
    if data["best"]:
        figs["stage_curves"] = _stage_curves(plt, data)
        figs["cost_split"] = _cost_split(plt, data)
    return figs


def _table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _leaderboard(data: dict) -> str:
    rows = [[str(r["rank"]), str(r["number"]), score_text(r["score"]),
             _num(r["cost_gpu_hours"]["total"]), html.escape(r["source"] or "-"),
             "<br>".join(html.escape(f"{s}: {Plan(p).describe()}")
                         for s, p in r["allocation"].items())] for r in data["leaderboard"]]
    return _table(["rank", "trial", "score", "est. GPU-h", "source", "allocation"], rows,
                  {0, 1, 2, 3})


def _choices(data: dict) -> str:
    dims = list(dict.fromkeys(d for names in data["dimensions"].values() for d in names))
    rows = [[html.escape(r["stage"]), *(html.escape(str(r["plan"].get(d, "-"))) for d in dims),
             score_text(r["score"]), _num(r["train_gpu_hours"]),
             _num(r["inference_gpu_hours"])]
            for r in data["choices"]]
    n = len(dims)
    return _table(["stage", *dims, "stage score", "training GPU-h", "inference GPU-h"], rows,
                  {n + 1, n + 2, n + 3})


def _kpis(data: dict) -> str:
    c = data["comparison"]
    items = [("best score", score_text(c["best_score"]))]
    if c["optimum"] is not None:
        gap = None if c["best_score"] is None else c["optimum"] - c["best_score"]
        frac = c["fraction_of_optimum"]
        items += [("exact optimum", score_text(c["optimum"])),
                  ("gap to optimum", score_text(gap)),
                  ("of the optimum", "-" if frac is None else f"{frac:.1%}")]
    items += [("trials to best", str(c["trials_to_best"] or "-")),
              ("search GPU-h to best", _num(c["search_gpu_hours_to_best"])),
              ("best's est. cost, GPU-h", f"{_num(c['best_cost_gpu_hours'])} of "
                                          f"{_num(data['budget_gpu_hours'])}")]
    return '<div class="kpis">' + "".join(
        f'<div class="kpi"><b>{v}</b><span>{html.escape(k)}</span></div>'
        for k, v in items) + "</div>"


def _figure(images: dict[str, str], name: str, caption: str) -> str:
    return (f'<figure><img src="data:image/png;base64,{images[name]}" alt="{name}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>") if name in images else ""


def page(data: dict, images: dict[str, str]) -> str:
    """The HTML page; `images` maps figure names to base64 PNGs."""
    c = data["comparison"]
    statuses = ", ".join(f"{k} {v}" for k, v in data["trials_by_status"].items() if v)
    title = html.escape(data["study"])
    best = ("<p>No successful trial yet.</p>" if not data["best"] else
            _choices(data) + _figure(images, "cost_split", "estimated GPU-hours of the best "
                                     "allocation per stage (a shared fine-tune counts in each "
                                     "stage that serves from it)"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>planner report: {title}</title>
<style>{_STYLE}</style></head><body>
<h1>{title}</h1>
<p class="meta">task {html.escape(data['task'])} &middot; strategy {html.escape(data['strategy'])}
&middot; seed {data['seed']} &middot; budget {html.escape(data['budget'])}
({_num(data['budget_gpu_hours'])} GPU-h) &middot; {data['trials']} trials ({statuses})</p>
{_kpis(data)}
<h2>Search progress</h2>
<div class="grid">
{_figure(images, "best_vs_trials", "best score so far against trials")}
{_figure(images, "best_vs_search_gpu_hours", "best score so far against search GPU-hours ("
         + c["search_cost"] + ")")}
</div>
<h2>The best allocation</h2>
{best}
<h2>Each stage: score against n, per arm</h2>
{_figure(images, "stage_curves", "each stage's own score for every arm (the plan without n) "
         "the search evaluated; the best allocation's arm is bold")}
<h2>Leaderboard</h2>
{_leaderboard(data)}
<footer>planner report &middot; search GPU-hours: {html.escape(c['search_cost'])}</footer>
</body></html>
"""


def write_report(data: dict, out: Path, png_dir: Path) -> list[Path]:
    """Write the page to `out` and its plots as PNGs into `png_dir`; return the PNGs."""
    plt = _pyplot()
    png_dir.mkdir(parents=True, exist_ok=True)
    images, pngs = {}, []
    for name, fig in figures(data).items():
        path = png_dir / f"{name}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        images[name] = base64.b64encode(path.read_bytes()).decode()
        pngs.append(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(data, images), encoding="utf-8")
    return pngs

"""One self-contained HTML page about a study: search progress, best configuration, test score."""

from __future__ import annotations

import html
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.offline import get_plotlyjs

from search.artifacts import row_normalised
from search.study_plots import StudyPlots, study_plots

logger = logging.getLogger(__name__)

STATE_COLOURS = {
    "COMPLETE": "#2563eb",
    "PRUNED": "#f59e0b",
    "RUNNING": "#16a34a",
    "FAIL": "#dc2626",
    "WAITING": "#6b7280",
}
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
# Optuna's plots in the page (search/study_plots.py); the learning curves are drawn here, by state.
_OPTUNA_PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "slice")
_MAX_TICK_LABELS = 30  # above this many classes the confusion axes name classes on hover only


def write_report(study: optuna.Study, out_path: str | Path) -> Path:
    """Write the study's HTML report (no network needed to view it) to out_path; return it."""
    page = render_report(study)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name then renamed, so a browser never sees half a page.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    logger.info("wrote study report %s", out)
    return out


def render_report(study: optuna.Study) -> str:
    """Return the report page for the study as one HTML string."""
    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    title = f"Study {study.study_name}"
    if not trials:
        body = _header(study, trials) + _card(
            "No trials yet",
            "<p>This study has no trials yet. Start the search (<code>python run_study.py"
            "</code>) and write the report again, or watch it live in optuna-dashboard.</p>",
        )
        return _page(title, body, with_plotly=False)

    single = len(study.directions) == 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = _best_trial(study, complete) if single else None
    plots = study_plots(study, _OPTUNA_PLOTS)
    sections = [
        _header(study, trials),
        _summary_section(study, best, attrs),
        _plot_section(plots, "optimization_history", "Optimization history", height=420),
        _curves_section(trials),
        _plot_section(plots, "param_importances", "Parameter importances", height=360),
        _plot_section(
            plots,
            "parallel_coordinate",
            "Parallel coordinates",
            height=460,
            scope=" (completed trials)",
        ),
        _plot_section(plots, "slice", "Slice plots", height=400, scope=" (completed trials)"),
        _test_section(attrs.get("final")),
        _protocol_section(attrs.get("protocol")),
        _audit_section(attrs.get("audit")),
        _trials_section(trials),
    ]
    return _page(title, "\n".join(sections), with_plotly=True)


# ---- sections -------------------------------------------------------------------------------


def _header(study: optuna.Study, trials: Sequence[FrozenTrial]) -> str:
    counts = Counter(t.state.name for t in trials)
    chips = "".join(
        f'<span class="chip" style="--c:{STATE_COLOURS.get(name, "#6b7280")}">'
        f"{html.escape(name.lower())} <b>{counts[name]}</b></span>"
        for name in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
        if counts[name]
    )
    directions = ", ".join(d.name.lower() for d in study.directions)
    running = counts["RUNNING"]
    live = (
        f'<p class="note">{running} trial{"s" if running != 1 else ""} still running: '
        "this page is a snapshot; write the report again for later results.</p>"
        if running
        else ""
    )
    stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"<header><h1>{html.escape(study.study_name)}</h1>"
        f'<p class="sub">{len(trials)} trials · objective: validation top-1 ({directions})'
        f" · report written {html.escape(stamp)}</p>"
        f'<div class="chips">{chips}</div>{live}</header>'
    )


def _summary_section(study: optuna.Study, best: FrozenTrial | None, attrs: dict[str, Any]) -> str:
    if len(study.directions) != 1:
        return _card("Best configuration", _note("This report covers single-objective studies."))
    if best is None:
        return _card(
            "Best configuration",
            _note("No trial has completed yet, so there is no best configuration."),
        )
    final = attrs.get("final")
    rows = [("trial", f"#{best.number}"), ("validation top-1", _pct(best.value))]
    rows += [(name, _fmt(value)) for name, value in best.params.items()]
    for key, label in (
        ("param_count", "parameters"),
        ("epochs_run", "epochs run"),
        ("examples_per_s", "train examples/s"),
        ("wall_s", "wall time (s)"),
        ("wandb_run", "W&B run"),
    ):
        if best.user_attrs.get(key) is not None:
            rows.append((label, _fmt(best.user_attrs[key])))
    left = f"<h3>Best trial</h3>{_kv_table(rows)}"

    if isinstance(final, dict) and isinstance(final.get("test"), dict):
        test = final["test"]
        score_rows = [
            ("scored trial", f"#{final.get('trial_number', '?')}"),
            ("test top-1", _pct(test.get("top1"))),
            ("test top-5", _pct(test.get("top5"))),
            ("test loss", _fmt(test.get("loss"))),
        ]
        refit = final.get("refit")
        if isinstance(refit, dict) and isinstance(refit.get("test"), dict):
            score_rows[1] = ("test top-1, search model", _pct(test.get("top1")))
            score_rows.insert(2, ("test top-1, refit model", _pct(refit["test"].get("top1"))))
        if final.get("checkpoint"):
            score_rows.append(("checkpoint", _fmt(final["checkpoint"])))
        right = "<h3>Test split</h3>" + _kv_table(score_rows)
        if isinstance(refit, dict) and refit.get("diverged"):
            right += _note(
                "The refit on all training groups diverged: " + html.escape(str(refit["diverged"]))
            )
        elif isinstance(refit, dict) and isinstance(refit.get("test"), dict):
            right += _note(
                f"Search model: the best trial's weights, trained on the training groups only. "
                f"Refit model: the same configuration retrained on all "
                f"{html.escape(_fmt(refit.get('train_clips')))} training clips (validation "
                f"groups included) for {html.escape(_fmt(refit.get('epochs')))} epochs, "
                "its best epoch count"
                + _averaged(refit.get("averaged_epochs"))
                + "; each was scored on the test groups once."
            )
        if final.get("trial_number") != best.number:
            right += _note(
                f"The test score belongs to trial #{final.get('trial_number')}; the best trial "
                f"is now #{best.number}, which has not been scored on the test split."
            )
    else:
        right = "<h3>Test split</h3>" + _note(
            "Not scored yet: the best configuration is scored on the test groups once the "
            "search ends."
        )

    baseline = attrs.get("baseline")
    if isinstance(baseline, dict) and _is_number(baseline.get("bag_of_frames_val_top1")):
        base = float(baseline["bag_of_frames_val_top1"])
        delta = best.value - base
        right += "<h3>Baseline</h3>" + _kv_table(
            [
                ("bag-of-frames val top-1", _pct(base)),
                ("best RNN val top-1", _pct(best.value)),
                ("difference", f"{delta * 100:+.1f} points"),
            ]
        )
    return _card("Best configuration", f'<div class="cols"><div>{left}</div><div>{right}</div>')


def _plot_section(plots: StudyPlots, name: str, title: str, *, height: int, scope: str = "") -> str:
    """Return the card of one Optuna plot (title + scope), or of why it is not drawn yet."""
    fig = plots.figures.get(name)
    if fig is None:
        return _card(title, _note(html.escape(plots.missing[name])))
    if name == "slice":
        fig.update_layout(width=None, autosize=True)  # Optuna fixes a width per parameter
    return _card(title + scope, _figure(fig, height=height))


def _curves_section(trials: Sequence[FrozenTrial]) -> str:
    fig = go.Figure()
    shown: set[str] = set()
    for t in trials:
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        state = t.state.name
        params = "<br>".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=[t.intermediate_values[s] for s in steps],
                mode="lines+markers",
                name=state.lower(),
                legendgroup=state,
                showlegend=state not in shown,
                line={
                    "color": STATE_COLOURS.get(state, "#6b7280"),
                    "dash": "dot" if state == "RUNNING" else "solid",
                    "width": 1.5,
                },
                marker={"size": 5},
                opacity=0.85,
                hovertemplate=(
                    f"trial #{t.number} ({state.lower()})<br>epoch %{{x}}<br>"
                    f"val top-1 %{{y:.3f}}<br>{params}<extra></extra>"
                ),
            )
        )
        shown.add(state)
    if not fig.data:
        return _card("Learning curves", _note("No trial has reported an epoch yet."))
    fig.update_layout(
        xaxis_title="epoch",
        yaxis_title="validation top-1",
        legend_title_text="trial state",
        hovermode="closest",
    )
    return _card(
        "Learning curves (validation top-1 per epoch)",
        _figure(fig, height=420)
        + '<p class="caption">Pruned trials stop early; their prune reason is in the table '
        "of trials below.</p>",
    )


def _test_section(final: Any) -> str:
    title = "Test split: confusion matrix and per-class accuracy"
    if not isinstance(final, dict) or not isinstance(final.get("test"), dict):
        return _card(title, _note("Not scored yet."))
    test = final["test"]
    names = list(final.get("class_names") or [])
    confusion = test.get("confusion")
    parts = []
    conf = None
    if confusion:
        conf = np.asarray(confusion, dtype=np.int64)
        if len(names) != conf.shape[0]:
            names = [str(i) for i in range(conf.shape[0])]
        hint = "hover a cell for the class names" if len(names) > _MAX_TICK_LABELS else None
        height = _confusion_height(len(names))
        parts.append(_figure(_confusion_figure(conf, names), height=height, title=hint))
    per_class = test.get("per_class")
    if per_class:
        parts.append(_per_class_table(per_class, names, conf))
    if not parts:
        return _card(title, _note("The final score has no confusion matrix or per-class table."))
    return _card(title, "".join(parts))


def _protocol_section(protocol: Any) -> str:
    title = "UCF-101 protocol: the best configuration on each official split"
    if not isinstance(protocol, dict) or not protocol.get("splits"):
        return _card(
            title,
            _note(
                "Not run: <code>python run_study.py evaluate --splits 1 2 3</code> refits the best "
                "configuration on each split's training groups and scores its test groups."
            ),
        )
    rows = []
    for s in protocol["splits"]:
        low, high = (s.get("interval95") or [None, None])[:2]
        cells = [
            str(s.get("split")),
            _pct(s.get("top1")),
            f"{_pct(low)} - {_pct(high)}",
            _fmt(s.get("train_clips")),
            _fmt(s.get("test_clips")),
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    table = (
        '<table class="grid"><thead><tr><th>split</th><th>test top-1</th>'
        "<th>95% bootstrap interval</th><th>train clips</th><th>test clips</th></tr></thead>"
        "<tbody>" + "".join(rows) + "</tbody></table>"
    )
    mean, std = protocol.get("mean_top1"), protocol.get("std_top1")
    summary = _kv_table(
        [
            ("trial", f"#{protocol.get('trial_number', '?')}"),
            (
                "epochs per refit",
                _fmt(protocol.get("epochs")) + _averaged(protocol.get("averaged_epochs")),
            ),
            (
                f"mean over {len(protocol['splits'])} splits",
                f"{_pct(mean)} ± {float(std) * 100:.1f} points (std)"
                if _is_number(std)
                else _pct(mean),
            ),
        ]
    )
    return _card(
        title,
        summary + table + '<p class="caption">Intervals: percentile bootstrap '
        f"over the test clips, {html.escape(_fmt(protocol.get('bootstrap_draws')))} "
        "draws.</p>",
    )


def _audit_section(audit: Any) -> str:
    title = "Pruning audit: pruned trials re-run to their full budget"
    if not isinstance(audit, dict):
        return _card(
            title,
            _note(
                "Not run: <code>python run_study.py audit --sample 10</code> re-runs a sample of "
                "pruned trials without pruning and counts how many would have beaten the median."
            ),
        )
    reruns = audit.get("reruns") or []
    if not reruns:
        return _card(title, _note("The study had no pruned trial to audit."))
    rows = []
    for r in reruns:
        final = r.get("final_value")
        cells = [
            f"#{r.get('trial_number')}",
            _fmt(r.get("pruned_epoch")),
            _pct(r.get("value_when_pruned")),
            "diverged" if final is None else _pct(final),
            _fmt(r.get("epochs")),
            "yes" if r.get("beat_median") else "no",
            "yes" if r.get("beat_best") else "no",
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    table = (
        '<table class="grid"><thead><tr><th>trial</th><th>pruned at epoch</th>'
        "<th>val top-1 then</th><th>final val top-1</th><th>epochs</th>"
        "<th>above median</th><th>above best</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    low, high = (audit.get("interval95") or [None, None])[:2]
    summary = _kv_table(
        [
            ("audited", f"{audit.get('audited')} of {audit.get('pruned')} pruned trials"),
            (
                "completed trials: median / best",
                f"{_pct(audit.get('median'))} / {_pct(audit.get('best'))}",
            ),
            (
                "false-prune rate (finished above the median)",
                f"{_pct(audit.get('false_prune_rate'))} ({audit.get('beat_median')} of "
                f"{audit.get('audited')}; 95% interval {_pct(low)} - {_pct(high)})",
            ),
            ("would have beaten the best", _fmt(audit.get("beat_best"))),
            ("wall time (s)", _fmt(audit.get("wall_s"))),
        ]
    )
    return _card(title, summary + table)


def _trials_section(trials: Sequence[FrozenTrial]) -> str:
    params = sorted({k for t in trials for k in t.params})
    head = ["#", "state", "val top-1", *params, "epochs", "wall s", "examples/s", "note"]
    rows = []
    for t in trials:
        state = t.state.name
        colour = STATE_COLOURS.get(state, "#6b7280")
        cells = [
            str(t.number),
            f'<span class="state"><span class="dot" style="--c:{colour}"></span>'
            f"{html.escape(state.lower())}</span>",
            _pct(t.value) if t.value is not None else "",
            *(html.escape(_fmt(t.params[p])) if p in t.params else "" for p in params),
            html.escape(_fmt(t.user_attrs.get("epochs_run", ""))),
            html.escape(_fmt(t.user_attrs.get("wall_s", ""))),
            html.escape(_fmt(t.user_attrs.get("examples_per_s", ""))),
            html.escape(_trial_note(t)),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table = (
        '<div class="scroll"><table class="grid"><thead><tr>'
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )
    return _card("All trials", table)


# ---- pieces ---------------------------------------------------------------------------------


def _best_trial(study: optuna.Study, complete: Sequence[FrozenTrial]) -> FrozenTrial | None:
    if not complete:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(complete, key=lambda t: t.value)


def _confusion_figure(conf: np.ndarray, names: Sequence[str]) -> go.Figure:
    labels = [f"{i} {name}" for i, name in enumerate(names)]
    norm = row_normalised(conf)
    fig = go.Figure(
        go.Heatmap(
            z=norm.round(4),
            x=labels,
            y=labels,
            customdata=conf,
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar={"title": {"text": "share of row"}},
            hovertemplate=(
                "true: %{y}<br>predicted: %{x}<br>%{z:.1%} of the true class"
                "<br>%{customdata} clips<extra></extra>"
            ),
        )
    )
    ticks = len(labels) <= _MAX_TICK_LABELS
    fig.update_layout(
        xaxis={"title": "predicted class", "showticklabels": ticks, "constrain": "domain"},
        yaxis={
            "title": "true class",
            "showticklabels": ticks,
            "autorange": "reversed",
            "scaleanchor": "x",
            "constrain": "domain",
        },
    )
    return fig


def _confusion_height(n: int) -> int:
    return int(min(900, max(420, 160 + 8 * n)))


def _per_class_table(
    per_class: Sequence[float | None], names: Sequence[str], conf: np.ndarray | None
) -> str:
    scored, unscored = [], []
    for cid, acc in enumerate(per_class):
        (scored if _is_number(acc) else unscored).append((cid, acc))
    scored.sort(key=lambda item: (item[1], item[0]))
    rows = []
    for rank, (cid, acc) in enumerate(scored, start=1):
        name = names[cid] if cid < len(names) else str(cid)
        clips, confused = "", ""
        if conf is not None and cid < conf.shape[0]:
            row = conf[cid].copy()
            clips = str(int(row.sum()))
            row[cid] = 0
            if row.sum() > 0:
                other = int(row.argmax())
                other_name = names[other] if other < len(names) else str(other)
                confused = f"{other} {other_name} ({int(row[other])})"
        bar = f'<span class="bar"><span style="width:{float(acc) * 100:.1f}%"></span></span>'
        rows.append(
            f"<tr><td>{rank}</td><td>{cid}</td><td>{html.escape(name)}</td>"
            f"<td>{bar} {_pct(acc)}</td><td>{clips}</td><td>{html.escape(confused)}</td></tr>"
        )
    missing = [
        f"{cid} {names[cid] if cid < len(names) else ''}".strip() for cid, _ in unscored if cid
    ]
    note = _note("No test clips for: " + html.escape(", ".join(missing)) + ".") if missing else ""
    return (
        "<h3>Per-class test accuracy, worst first</h3>"
        '<div class="scroll tall"><table class="grid"><thead><tr><th>rank</th><th>id</th>'
        "<th>class</th><th>top-1</th><th>clips</th><th>most often taken for (clips)</th>"
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>" + note
    )


def _trial_note(t: FrozenTrial) -> str:
    reason = t.user_attrs.get("prune_reason")
    if t.state == TrialState.PRUNED and isinstance(reason, dict) and "median" not in reason:
        return str(reason.get("text", "pruned"))  # diverged: no median was involved
    if t.state == TrialState.PRUNED and isinstance(reason, dict):
        return (
            f"pruned at epoch {reason.get('epoch')}: {_fmt(reason.get('value'))} below the "
            f"median {_fmt(reason.get('median'))} of {reason.get('n_trials')} trials"
        )
    if t.state == TrialState.FAIL:
        return str(t.user_attrs.get("fail_reason") or "failed (no reason recorded)")
    return ""


def _figure(fig: go.Figure, *, height: int, title: str | None = None) -> str:
    # The card already names the plot; Optuna's own plot titles would repeat it.
    fig.update_layout(
        title_text=title,
        height=height,
        margin={"l": 60, "r": 30, "t": 40, "b": 50},
        template="plotly_white",
        font={"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
    )
    return (
        '<div class="fig">'
        + fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            config=_PLOT_CONFIG,
            default_height=f"{height}px",
        )
        + "</div>"
    )


def _card(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    return (
        '<table class="kv">'
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _averaged(epochs: Any) -> str:
    """Return ", weights averaged over its last N epochs" (nothing for records before it)."""
    if not isinstance(epochs, int) or epochs < 2:
        return ""
    return f", weights averaged over its last {epochs} epochs"


def _pct(value: Any) -> str:
    return f"{float(value) * 100:.1f}%" if _is_number(value) else "n/a"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return "" if value is None else str(value)


def _page(title: str, body: str, *, with_plotly: bool) -> str:
    # plotly.js goes inline once, in the head, so the file opens offline and every figure can
    # rely on it; a page without figures skips its ~4.8 MB.
    script = (
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
        f"<script>{get_plotlyjs()}</script>"
        if with_plotly
        else ""
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>{script}</head>"
        f"<body><main>{body}</main></body></html>\n"
    )


_CSS = """
:root { --fg: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 20px 60px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
.sub { margin: 0 0 10px; color: var(--muted); }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 20px; margin: 18px 0; box-shadow: 0 1px 2px rgba(0,0,0,.04); }
h2 { margin: 0 0 12px; font-size: 18px; }
h3 { margin: 14px 0 6px; font-size: 15px; }
.chips { display: flex; gap: 8px; flex-wrap: wrap; }
.chip { border: 1px solid var(--c); color: var(--c); border-radius: 999px; padding: 2px 10px;
  background: #fff; }
.state { white-space: nowrap; }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%;
  background: var(--c); margin-right: 6px; }
.note { color: var(--muted); background: #f9fafb; border-left: 3px solid #cbd5e1;
  padding: 6px 10px; margin: 8px 0; }
.caption { color: var(--muted); font-size: 12px; margin: 4px 0 0; }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 24px; }
@media (max-width: 800px) { .cols { grid-template-columns: 1fr; } }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.kv th { text-align: left; color: var(--muted); font-weight: 500; padding: 3px 16px 3px 0; }
table.kv td { padding: 3px 0; word-break: break-all; }
table.grid { width: 100%; font-size: 13px; }
table.grid th { position: sticky; top: 0; background: #f3f4f6; text-align: left;
  padding: 6px 8px; border-bottom: 1px solid var(--line); }
table.grid td { padding: 4px 8px; border-bottom: 1px solid var(--line); }
table.grid tbody tr:nth-child(even) { background: #fafafa; }
.scroll { overflow: auto; max-height: 520px; border: 1px solid var(--line); border-radius: 6px; }
.scroll.tall { max-height: 420px; }
.bar { display: inline-block; width: 80px; height: 8px; background: #e5e7eb;
  border-radius: 4px; vertical-align: middle; overflow: hidden; }
.bar span { display: block; height: 100%; background: #2563eb; }
.fig { width: 100%; }
code { background: #f3f4f6; padding: 1px 4px; border-radius: 4px; }
"""

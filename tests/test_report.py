"""The study's HTML report: one offline file that says how the search went and what won."""

import base64
import json
import re

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from study_factory import CLASS_NAMES, make_study

from search.clip_outcomes import outcome_attrs
from search.report import write_report


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _figures(page: str) -> list[dict]:
    """Return the plotly figure specs (data + layout) embedded in the page."""
    specs = []
    for call in re.finditer(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*", page):
        data, end = json.JSONDecoder().raw_decode(page, call.end())
        layout, _ = json.JSONDecoder().raw_decode(page, page.index("{", end))
        specs.append({"data": data, "layout": layout})
    return specs


def _array(value) -> np.ndarray:
    """Return a figure array; plotly 7 writes numpy arrays as base64 typed arrays."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return flat.reshape([int(n) for n in value["shape"].split(",")])
    return np.asarray(value)


def _report(study, tmp_path) -> str:
    return write_report(study, tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_finished_study_report_shows_best_trial_test_score_and_baseline(tmp_path):
    study = make_study()
    page = _report(study, tmp_path)
    best = study.best_trial
    final = study.user_attrs["final"]
    assert f"<td>#{best.number}</td>" in page
    assert f"<td>{best.value * 100:.1f}%</td>" in page
    assert f"<td>{final['test']['top1'] * 100:.1f}%</td>" in page
    assert "<td>41.0%</td>" in page  # bag-of-frames baseline
    assert f"<td>{(best.value - 0.41) * 100:+.1f} points</td>" in page
    assert "Not scored yet" not in page


def test_report_is_one_file_that_loads_nothing_from_the_network(tmp_path):
    page = _report(make_study(), tmp_path)
    assert page.count("Plotly.newPlot") >= 6
    assert "plotly.js v" in page[: page.index("</head>")]  # inlined once, in the head
    assert page.count("plotly.js v") == 1
    assert not re.search(r"<(script|img|iframe)[^>]+src=", page)
    assert "<link" not in page


def test_learning_curves_show_pruned_and_running_trials_in_their_own_colours(tmp_path):
    study = make_study(running=True)
    page = _report(study, tmp_path)
    curves = next(f for f in _figures(page) if f["layout"]["xaxis"]["title"]["text"] == "epoch")
    by_state: dict[str, list] = {}
    for trace in curves["data"]:
        by_state.setdefault(trace["legendgroup"], []).append(trace)
    counts = {state: len(traces) for state, traces in by_state.items()}
    assert counts == {"COMPLETE": 3, "PRUNED": 2, "FAIL": 1, "RUNNING": 1}
    colours = {state: {t["line"]["color"] for t in traces} for state, traces in by_state.items()}
    assert all(len(c) == 1 for c in colours.values())
    assert len(set.union(*colours.values())) == 4
    pruned_epochs = sorted(len(t["x"]) for t in by_state["PRUNED"])
    assert pruned_epochs == [2, 3]


def test_trials_table_explains_pruned_and_failed_trials(tmp_path):
    page = _report(make_study(), tmp_path)
    assert "pruned at epoch 2:" in page
    assert "pruned at epoch 3:" in page
    assert "TrainingDiverged: non-finite loss at epoch 1" in page


def test_per_class_table_lists_the_worst_class_first(tmp_path):
    page = _report(make_study(), tmp_path)
    table = page[page.index("Per-class test accuracy") :]
    first_row = re.search(r"<tbody><tr>(.*?)</tr>", table).group(1)
    cells = re.findall(r"<td>(.*?)</td>", first_row)
    assert cells[:3] == ["1", "2", CLASS_NAMES[2]]  # class 2 is never right in the factory
    assert cells[3].endswith("0.0%")
    assert cells[5].startswith(f"3 {CLASS_NAMES[3]}")  # and is always taken for class 3


def test_confusion_heatmap_is_row_normalised_with_counts_on_hover(tmp_path):
    study = make_study()
    page = _report(study, tmp_path)
    heat = next(f for f in _figures(page) if f["data"][0]["type"] == "heatmap")["data"][0]
    confusion = study.user_attrs["final"]["test"]["confusion"]
    assert _array(heat["customdata"]).tolist() == confusion
    row = confusion[5]
    assert _array(heat["z"])[5, 5] == pytest.approx(row[5] / sum(row), abs=1e-4)
    assert _array(heat["z"])[5].sum() == pytest.approx(1.0, abs=1e-3)
    assert heat["y"][5] == f"5 {CLASS_NAMES[5]}"


def test_running_study_without_final_says_not_scored_yet(tmp_path):
    study = make_study(running=True, final=False, baseline=False)
    page = _report(study, tmp_path)
    assert "Not scored yet" in page
    assert "1 trial still running" in page
    assert "<h3>Baseline</h3>" not in page
    assert '<span class="state"><span class="dot" style="--c:#16a34a"></span>running' in page


def test_running_study_before_any_trial_completes_still_renders(tmp_path):
    plan = ((TrialState.PRUNED, 1), (TrialState.FAIL, 1))
    study = make_study(plan=plan, running=True, final=False)
    page = _report(study, tmp_path)
    assert "No trial has completed yet" in page
    assert page.count("Needs at least two completed trials") == 1
    assert page.count("Appears once a trial has completed") == 3
    assert len(_figures(page)) == 1  # the learning curves


def test_importances_need_two_completed_trials(tmp_path):
    one = make_study(plan=((TrialState.COMPLETE, 2), (TrialState.PRUNED, 1)))
    two = make_study(plan=((TrialState.COMPLETE, 2), (TrialState.COMPLETE, 3)))
    assert "Needs at least two completed trials" in _report(one, tmp_path)
    assert "Needs at least two completed trials" not in _report(two, tmp_path)


def test_empty_study_gets_a_small_page_saying_no_trials_yet(tmp_path):
    page = _report(optuna.create_study(study_name="fresh"), tmp_path)
    assert "No trials yet" in page
    assert "Plotly" not in page
    assert len(page) < 10_000


def test_scores_of_an_older_best_trial_are_flagged(tmp_path):
    study = make_study()
    final = dict(study.user_attrs["final"], trial_number=3)
    study.set_user_attr("final", final)
    page = _report(study, tmp_path)
    best = study.best_trial.number
    assert f"The test score belongs to trial #3; the best trial is now #{best}," in page


def test_names_from_the_study_are_escaped(tmp_path):
    study = make_study(study_name="<script>alert(1)</script>")
    page = _report(study, tmp_path)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_report_replaces_the_file_whole_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    out.write_text("old")
    write_report(make_study(final=False), out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]


def test_classes_without_test_clips_are_listed_apart_not_ranked(tmp_path):
    study = make_study()
    final = study.user_attrs["final"]
    per_class = list(final["test"]["per_class"])
    per_class[4] = float("nan")  # how numpy's nan arrives through Optuna's JSON attrs
    study.set_user_attr("final", dict(final, test=dict(final["test"], per_class=per_class)))
    page = _report(study, tmp_path)
    table = page[page.index("Per-class test accuracy") :]
    ranked_ids = re.findall(r"<tr><td>\d+</td><td>(\d+)</td>", table)
    assert "4" not in ranked_ids and "0" not in ranked_ids
    assert len(ranked_ids) == 100
    assert f"No test clips for: 4 {CLASS_NAMES[4]}." in page


def _section(page: str, title: str) -> str:
    """Return the HTML of the report card whose heading starts with title."""
    start = page.index(f"<h2>{title}")
    return page[start : page.index("</section>", start)]


def test_refit_test_score_is_shown_beside_the_search_models(tmp_path):
    study = make_study()
    final = study.user_attrs["final"]
    final["refit"] = {"epochs": 7, "train_clips": 1234, "test": {"top1": 0.9876}}
    study.set_user_attr("final", final)
    page = _report(study, tmp_path)
    best = _section(page, "Best configuration")
    assert f"test top-1, search model</th><td>{final['test']['top1'] * 100:.1f}%" in best
    assert "test top-1, refit model</th><td>98.8%" in best
    assert "1234 training clips" in best and "for 7 epochs, its best epoch count;" in best
    # A refit that averaged its last epochs' weights says so.
    final["refit"]["averaged_epochs"] = 3
    study.set_user_attr("final", final)
    best = _section(_report(study, tmp_path), "Best configuration")
    assert "for 7 epochs, its best epoch count, weights averaged over its last 3 epochs;" in best


def test_audit_section_shows_each_rerun_and_the_false_prune_rate_with_its_interval(tmp_path):
    study = make_study()
    study.set_user_attr(
        "audit",
        {
            "pruned": 5,
            "audited": 2,
            "complete": 3,
            "median": 0.5,
            "best": 0.8,
            "reruns": [
                {
                    "trial_number": 2,
                    "pruned_epoch": 2,
                    "value_when_pruned": 0.07,
                    "final_value": 0.61,
                    "epochs": 9,
                    "beat_median": True,
                    "beat_best": False,
                },
                {
                    "trial_number": 5,
                    "pruned_epoch": 3,
                    "value_when_pruned": 0.1,
                    "final_value": None,
                    "epochs": 1,
                    "beat_median": False,
                    "beat_best": False,
                },
            ],
            "beat_median": 1,
            "beat_best": 0,
            "false_prune_rate": 0.5,
            "interval95": [0.0945, 0.9055],
            "wall_s": 12.5,
        },
    )
    audit = _section(_report(study, tmp_path), "Pruning audit")
    assert "2 of 5 pruned trials" in audit
    assert "50.0% (1 of 2; 95% interval 9.4% - 90.5%)" in audit
    assert "<td>#2</td><td>2</td><td>7.0%</td><td>61.0%</td><td>9</td><td>yes</td>" in audit
    assert "<td>diverged</td>" in audit


def test_protocol_section_lists_each_split_and_the_mean_and_std(tmp_path):
    study = make_study()
    study.set_user_attr(
        "protocol",
        {
            "trial_number": 0,
            "epochs": 6,
            "bootstrap_draws": 1000,
            "splits": [
                {
                    "split": s,
                    "top1": v,
                    "interval95": [v - 0.02, v + 0.01],
                    "train_clips": 9000,
                    "test_clips": 3700,
                }
                for s, v in ((1, 0.91), (2, 0.93), (3, 0.95))
            ],
            "mean_top1": 0.93,
            "std_top1": 0.02,
        },
    )
    protocol = _section(_report(study, tmp_path), "UCF-101 protocol")
    assert "<td>2</td><td>93.0%</td><td>91.0% - 94.0%</td>" in protocol
    assert "mean over 3 splits</th><td>93.0% ± 2.0 points (std)" in protocol


def test_report_says_how_to_run_the_audit_and_protocol_when_they_have_not_run(tmp_path):
    page = _report(make_study(), tmp_path)
    assert "run_study.py audit" in _section(page, "Pruning audit")
    assert "run_study.py evaluate --splits 1 2 3" in _section(page, "UCF-101 protocol")


def test_per_clip_outcomes_stay_out_of_the_report(tmp_path):
    study = optuna.create_study(study_name="outcomes", direction="maximize")
    outcomes = outcome_attrs(1, np.arange(4000) % 3 == 0, np.full(4000, 0.5))
    for number in range(2):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.set_user_attr("val_clips/1", outcomes["val_clips/1"])
        trial.set_user_attr("epochs_run", 1)
        trial.report(0.3 + number / 10, 1)
        study.tell(trial, 0.3 + number / 10)
    page = _report(study, tmp_path)
    assert "<td>#1</td>" in page  # the best trial's table is there, without its outcomes
    assert "val_clips" not in page
    assert outcomes["val_clips/1"]["correct"] not in page
    assert outcomes["val_clips/1"]["loss"] not in page

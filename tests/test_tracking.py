"""W&B tracking: runs are read back from the offline run files wandb writes."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import optuna
import pytest
from wandb_offline import (
    OfflineRunError,
    media_files,
    offline_runs,
    read_records,
    read_run,
    read_table,
    run_file,
)

from datasets.errors import UserError
from search import tracking
from search.clip_outcomes import outcome_attrs
from search.tracking import TrackingConfig, TrackingError, TrialRun

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch, tmp_path_factory):
    """No test may see a real W&B login: empty netrc, no key, no base URL."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")


def _cfg(tmp_path: Path, mode: str = "offline", **kw) -> TrackingConfig:
    return TrackingConfig(
        mode=mode, project="ucf101-test", group="study-a", dir=str(tmp_path), **kw
    )


def test_trial_run_records_group_job_type_name_and_config(tmp_path):
    params = {"cell": "lstm", "lr": 0.003, "hidden": 128, "epochs": 4}
    with TrialRun(_cfg(tmp_path), 7, params) as run:
        run.finish("complete", {"best_val_top1": 0.5})
    runs = offline_runs(tmp_path)
    assert len(runs) == 1
    got = runs[0]
    assert Path(run.path) == got.dir
    assert (got.project, got.group, got.job_type, got.name) == (
        "ucf101-test",
        "study-a",
        "trial",
        "trial-7",
    )
    assert got.config == params
    assert got.exit_code == 0


def test_epoch_metrics_are_logged_against_epoch_and_steps_against_train_step(tmp_path):
    with TrialRun(_cfg(tmp_path), 0, {}) as run:
        for step in (20, 40):
            run.log_step({"train/loss": 1.0 / step, "train/examples_per_s": 100.0}, step)
        for epoch in (1, 2, 3):
            run.log_epoch(
                epoch, {"val/loss": 2.0 - epoch / 10, "val/top1": epoch / 10, "val/top5": epoch / 5}
            )
        run.finish("complete", {})
    got = read_run(run.path)
    val = [(row["epoch"], row["val/top1"], row["val/top5"]) for _, row in got.column("val/top1")]
    assert val == [(1, 0.1, 0.2), (2, 0.2, 0.4), (3, pytest.approx(0.3), 0.6)]
    steps = [(row["train/step"], row["train/loss"]) for _, row in got.column("train/loss")]
    assert steps == [(20, 0.05), (40, 0.025)]
    # Validation rows never carry a train step and vice versa: the two x axes stay apart.
    assert all("train/step" not in row for _, row in got.column("val/loss"))
    assert got.metrics["val/top1"] == "epoch"
    assert got.metrics["train/loss"] == "train/step"


@pytest.mark.parametrize(
    ("state", "summary", "exit_code"),
    [
        ("complete", {"best_val_top1": 0.61}, 0),
        (
            "pruned",
            {"best_val_top1": 0.2, "pruned_epoch": 3, "pruned_value": 0.2, "pruned_median": 0.35},
            0,
        ),
        ("failed", {"fail_reason": "TrainingDiverged: loss is nan at epoch 2"}, 1),
    ],
)
def test_finish_records_trial_state_summary_and_exit_code(tmp_path, state, summary, exit_code):
    with TrialRun(_cfg(tmp_path), 1, {"lr": 0.1}) as run:
        run.log_epoch(1, {"val/top1": 0.2})
        run.finish(state, summary)
    got = read_run(run.path)
    assert got.summary[tracking.STATE_KEY] == state
    assert {k: got.summary[k] for k in summary} == summary
    assert got.exit_code == exit_code


def test_finish_twice_closes_the_run_once(tmp_path):
    run = TrialRun(_cfg(tmp_path), 2, {})
    run.finish("pruned", {"pruned_epoch": 1})
    run.finish("complete", {"best_val_top1": 0.9})
    run.log_epoch(2, {"val/top1": 0.9})  # after finish: dropped, not an error
    got = read_run(run.path)
    assert got.kinds.count("exit") == 1
    assert got.summary[tracking.STATE_KEY] == "pruned"
    assert "best_val_top1" not in got.summary
    assert got.column("val/top1") == []


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), KeyboardInterrupt()])
def test_exception_inside_with_marks_the_run_failed_and_closes_it(tmp_path, error):
    with pytest.raises(type(error)), TrialRun(_cfg(tmp_path), 3, {}) as run:
        run.log_epoch(1, {"val/top1": 0.1})
        raise error
    assert run.finished
    got = read_run(run.path)
    assert got.summary[tracking.STATE_KEY] == "failed"
    assert got.summary["fail_reason"].startswith(type(error).__name__)
    assert got.exit_code == 1
    assert got.kinds[-1] == "exit"


def test_trial_pruned_escaping_the_with_block_marks_the_run_pruned(tmp_path):
    with pytest.raises(optuna.TrialPruned), TrialRun(_cfg(tmp_path), 4, {}) as run:
        raise optuna.TrialPruned("epoch 2: 0.1 < median 0.3")
    got = read_run(run.path)
    assert got.summary[tracking.STATE_KEY] == "pruned"
    assert got.summary["prune_reason"] == "epoch 2: 0.1 < median 0.3"
    assert got.exit_code == 0


def test_leaving_the_with_block_without_finish_marks_the_run_failed(tmp_path):
    with TrialRun(_cfg(tmp_path), 5, {}) as run:
        pass
    got = read_run(run.path)
    assert got.summary[tracking.STATE_KEY] == "failed"
    assert got.exit_code == 1


def test_unknown_state_is_rejected(tmp_path):
    with TrialRun(_cfg(tmp_path), 6, {}) as run:
        with pytest.raises(ValueError, match="complete, pruned, failed"):
            run.finish("done", {})
        run.finish("complete", {})


def test_a_metric_logged_per_step_and_per_epoch_keeps_its_first_axis_and_warns(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="search.tracking")
    with TrialRun(_cfg(tmp_path), 6, {}) as run:
        run.log_step({"train/examples_per_s": 10.0, "epoch": 1}, 20)
        run.log_epoch(1, {"train/examples_per_s": 12.0})
        run.log_epoch(2, {"train/examples_per_s": 13.0})
        run.finish("complete", {})
    got = read_run(run.path)
    assert [v for v, _ in got.column("train/examples_per_s")] == [10.0, 12.0, 13.0]
    assert got.metrics["train/examples_per_s"] == "train/step"
    assert "epoch" not in got.metrics  # the axis itself is never given an axis
    assert caplog.text.count("logged against both") == 1


def test_concurrent_trials_in_threads_keep_their_metrics_apart(tmp_path):
    import wandb

    cfg = _cfg(tmp_path)
    start = threading.Barrier(2)
    paths: dict[int, str] = {}
    errors: list[BaseException] = []

    def trial(number: int) -> None:
        try:
            with TrialRun(cfg, number, {"trial": number}) as run:
                paths[number] = run.path
                start.wait(timeout=30)
                for step in range(30):
                    run.log_step(
                        {f"train/loss_{number}": float(number), "train/top1": number}, step
                    )
                for epoch in range(1, 4):
                    run.log_epoch(epoch, {"val/top1": number + epoch / 10})
                run.finish("complete", {"best_val_top1": number + 0.3})
        except BaseException as err:  # surfaced in the main thread below
            errors.append(err)

    threads = [threading.Thread(target=trial, args=(n,)) for n in (10, 20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert wandb.run is None  # nothing went through the global run
    for number in (10, 20):
        other = 30 - number
        got = read_run(paths[number])
        assert got.name == f"trial-{number}"
        assert got.config == {"trial": number}
        keys = {k for row in got.history for k in row}
        assert f"train/loss_{number}" in keys
        assert f"train/loss_{other}" not in keys
        assert {row["train/top1"] for _, row in got.column("train/top1")} == {number}
        assert [v for v, _ in got.column("val/top1")] == pytest.approx(
            [number + 0.1, number + 0.2, number + 0.3]
        )
        assert got.summary["best_val_top1"] == number + 0.3


def _study(n_complete: int, n_pruned: int = 0) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="study-a")
    plan = ["complete"] * n_complete + ["pruned"] * n_pruned

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_categorical("cell", ["gru", "lstm"])
        trial.set_user_attr("wandb_run", f"ent/ucf101-test/run{trial.number}")
        for epoch in (1, 2):
            trial.report(lr * epoch, epoch)
        if plan[trial.number] == "pruned":
            raise optuna.TrialPruned()
        return lr

    study.optimize(objective, n_trials=len(plan))
    return study


def test_study_run_logs_a_table_of_all_trials_plots_and_confusion_matrix(tmp_path):
    study = _study(n_complete=3, n_pruned=1)
    confusion = np.zeros((4, 4), dtype=np.int64)  # ids 1..3, id 0 = background never seen
    confusion[1, 1], confusion[2, 3], confusion[3, 3] = 5, 2, 4
    path = tracking.log_study_run(_cfg(tmp_path), study, confusion, ["Archery", "Biking", "Diving"])
    got = read_run(path)
    assert (got.name, got.job_type, got.group) == ("study-study-a", "study", "study-a")
    assert got.exit_code == 0
    assert got.summary["best_trial"] == study.best_trial.number
    assert got.summary["best_value"] == pytest.approx(study.best_value)
    assert got.summary["n_complete"] == 3 and got.summary["n_pruned"] == 1

    tables = {p.name.split("_0_")[0]: p for p in media_files(got, "table") if p.is_file()}
    rows = read_table(tables["trials"])
    assert [r["number"] for r in rows] == [0, 1, 2, 3]
    assert [r["state"] for r in rows] == ["complete"] * 3 + ["pruned"]
    for row, trial in zip(rows, study.trials, strict=True):
        assert row["lr"] == pytest.approx(trial.params["lr"])
        assert row["cell"] == trial.params["cell"]
        assert row["wandb_run"] == f"ent/ucf101-test/run{trial.number}"
        assert row["duration_s"] >= 0
    assert rows[3]["value"] == pytest.approx(study.trials[3].value)  # last reported value

    cells = {
        (r["Actual"], r["Predicted"]): r["nPredictions"]
        for r in read_table(tables["best_confusion_matrix_table"])
    }
    assert len(cells) == 9  # the empty background row/column is left out
    assert cells[("Archery", "Archery")] == 5
    assert cells[("Biking", "Diving")] == 2
    assert cells[("Diving", "Biking")] == 0

    plots = {p.name.split("_0_")[0] for p in media_files(got, "plotly") if p.is_file()}
    assert plots == {
        "optimization_history",
        "intermediate_values",
        "parallel_coordinate",
        "param_importances",
    }


def test_study_run_leaves_out_importances_until_two_trials_complete(tmp_path):
    path = tracking.log_study_run(_cfg(tmp_path), _study(n_complete=1), None, [])
    got = read_run(path)
    plots = {p.name.split("_0_")[0] for p in media_files(got, "plotly") if p.is_file()}
    assert "param_importances" not in plots
    assert "optimization_history" in plots
    assert media_files(got, "table")  # the trials table is still there
    assert got.exit_code == 0


def _tables_by_key(run) -> dict[str, Path]:
    root = run.dir / "files" / "media" / "table"
    return {
        str(p.relative_to(root)).split("_0_")[0]: p
        for p in media_files(run, "table")
        if p.is_file()
    }


def test_study_run_carries_final_refit_audit_and_protocol(tmp_path):
    study = _study(n_complete=2, n_pruned=1)
    per_class = [0.5] * 20 + [None]
    study.set_user_attr(
        "final",
        {
            "trial_number": 1,
            "weights": "reloaded",
            "params": {"cell": "gru", "lr": 0.01},
            "test": {
                "top1": 0.61,
                "top5": 0.9,
                "per_class": per_class,
                "confusion": [[1, 0], [0, 1]],
            },
            "refit": {"epochs": 4, "train_clips": 300, "test": {"top1": 0.64, "top5": 0.91}},
        },
    )
    study.set_user_attr(
        "audit",
        {
            "audited": 2,
            "false_prune_rate": 0.5,
            "interval95": [0.09, 0.91],
            "reruns": [
                {"number": 2, "final_value": 0.7, "beat_median": True},
                {"number": 3, "final_value": 0.2, "beat_median": False},
            ],
        },
    )
    study.set_user_attr(
        "protocol",
        {
            "mean_top1": 0.6,
            "std_top1": 0.02,
            "splits": [{"split": 1, "top1": 0.58}, {"split": 2, "top1": 0.62}],
        },
    )
    got = read_run(tracking.log_study_run(_cfg(tmp_path), study, None, []))
    assert got.exit_code == 0
    s = got.summary
    assert s["final/test/top1"] == 0.61 and s["final/refit/test/top1"] == 0.64
    assert s["final/refit/epochs"] == 4 and s["final/params/cell"] == "gru"
    assert s["audit/false_prune_rate"] == 0.5 and s["audit/interval95"] == [0.09, 0.91]
    assert s["protocol/mean_top1"] == 0.6
    assert not any("confusion" in k for k in s)  # a matrix is a chart, not a summary value
    tables = _tables_by_key(got)
    assert [r["final_value"] for r in read_table(tables["audit/reruns"])] == [0.7, 0.2]
    assert [r["top1"] for r in read_table(tables["protocol/splits"])] == [0.58, 0.62]
    assert [r["per_class"] for r in read_table(tables["final/test/per_class"])] == per_class


def test_every_study_run_write_of_one_study_goes_to_the_same_run_id(tmp_path):
    study = _study(n_complete=1)
    first = read_run(tracking.log_study_run(_cfg(tmp_path), study, None, []))
    study.set_user_attr("audit", {"audited": 1, "false_prune_rate": 0.0})
    second = read_run(tracking.log_study_run(_cfg(tmp_path / "later"), study, None, []))
    assert first.id == second.id == study.user_attrs[tracking.STUDY_RUN_ATTR]["id"]
    assert second.summary["audit/audited"] == 1
    other = _study(n_complete=1)  # a study of the same name elsewhere: its own run
    assert read_run(tracking.log_study_run(_cfg(tmp_path / "o"), other, None, [])).id != first.id


def test_confusion_chart_rejects_a_matrix_that_does_not_match_the_names():
    with pytest.raises(ValueError, match="3 classes but 5 names"):
        tracking.confusion_chart(np.eye(3, dtype=np.int64), list("abcde"))


def test_disabled_mode_creates_nothing_and_costs_nothing(tmp_path):
    cfg = _cfg(tmp_path / "out", mode="disabled")
    with TrialRun(cfg, 0, {"lr": 1.0}) as run:
        run.log_step({"train/loss": 1.0}, 1)
        run.log_epoch(1, {"val/top1": 0.5})
        run.finish("complete", {"best_val_top1": 0.5})
    assert run.path is None
    assert tracking.log_study_run(cfg, _study(n_complete=1), None, []) is None
    assert tracking.sync_command(cfg) is None
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_disabled_mode_never_imports_wandb(tmp_path):
    code = (
        "import sys\n"
        "from search.tracking import TrackingConfig, TrialRun\n"
        f"cfg = TrackingConfig('disabled', 'p', 'g', {str(tmp_path)!r})\n"
        "with TrialRun(cfg, 0, {}) as r:\n"
        "    r.log_epoch(1, {'val/top1': 0.1}); r.finish('complete', {})\n"
        "assert 'wandb' not in sys.modules, 'wandb was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_resolve_mode_prefers_explicit_then_wandb_mode_then_key(monkeypatch, tmp_path):
    assert tracking.resolve_mode("disabled") == "disabled"
    assert tracking.resolve_mode("Online") == "online"
    with pytest.raises(ValueError, match="online, offline, disabled"):
        tracking.resolve_mode("dryrun")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.resolve_mode(None) == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert tracking.resolve_mode(None) == "offline"  # no key anywhere
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert tracking.resolve_mode(None) == "online"
    assert tracking.resolve_mode("offline") == "offline"


def test_resolve_mode_finds_a_netrc_key_for_api_wandb_ai(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.com login u password p\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert tracking.resolve_mode(None) == "offline"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert tracking.resolve_mode(None) == "online"


def test_tracking_config_rejects_an_unknown_mode(tmp_path):
    with pytest.raises(ValueError, match="'shared' is not one of online, offline, disabled"):
        TrackingConfig(mode="shared", project="p", group="g", dir=str(tmp_path))


def test_online_without_a_key_logs_offline_with_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="search.tracking")
    with TrialRun(_cfg(tmp_path, mode="online"), 0, {}) as run:
        run.finish("complete", {})
    assert Path(run.path).name.startswith("offline-run-")
    assert "no API key" in caplog.text
    assert tracking.sync_command(_cfg(tmp_path, mode="online")) is not None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_online_init_that_cannot_reach_the_server_falls_back_to_offline(
    monkeypatch, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="search.tracking")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    cfg = _cfg(tmp_path, mode="online", init_timeout_s=1.0)
    with TrialRun(cfg, 9, {"lr": 0.5}) as run:
        run.log_epoch(1, {"val/top1": 0.25})
        run.finish("complete", {"best_val_top1": 0.25})
    assert "online init of trial-9 failed" in caplog.text
    got = read_run(run.path)
    assert got.name == "trial-9" and got.config == {"lr": 0.5}
    assert [v for v, _ in got.column("val/top1")] == [0.25]
    assert not Path(os.environ["NETRC"]).exists()  # the key was not written anywhere


def test_sync_command_names_the_offline_run_folders(tmp_path):
    cfg = _cfg(tmp_path / "my runs")
    assert tracking.sync_command(cfg) == (
        f"wandb sync '{(tmp_path / 'my runs').resolve()}/wandb'/offline-run-*"
    )
    assert tracking.sync_command(_cfg(tmp_path, mode="online")) is None  # nothing fell back


def test_build_report_offline_says_to_sync_and_how_to_build_it_later(tmp_path):
    with pytest.raises(TrackingError) as err:
        tracking.build_report(_cfg(tmp_path), "study-a", ["lr", "hidden"])
    message = str(err.value)
    assert "wandb sync " in message
    assert "python run_study.py --study-name study-a --wandb-report --trials 0" in message
    assert "wandb login" in message


def test_report_spec_has_parallel_coordinates_importance_and_the_group_runs():
    from wandb_workspaces.reports import v2 as wr

    report = tracking.report_spec("ent", "ucf101-test", "study-a", ["lr", "hidden", "cell"])
    grid = next(b for b in report.blocks if isinstance(b, wr.PanelGrid))
    assert grid.runsets[0].filters == "Group = \"study-a\" and JobType = 'trial'"
    coords = next(p for p in grid.panels if isinstance(p, wr.ParallelCoordinatesPlot))
    assert [c.metric for c in coords.columns] == [
        wr.Config("lr"),
        wr.Config("hidden"),
        wr.Config("cell"),
        wr.SummaryMetric(tracking.BEST_METRIC),
    ]
    importance = next(p for p in grid.panels if isinstance(p, wr.ParameterImportancePlot))
    assert importance.with_respect_to == tracking.BEST_METRIC
    assert (report.entity, report.project) == ("ent", "ucf101-test")


def test_reader_joins_records_split_across_blocks_and_checks_crcs(tmp_path):
    big = "x" * 100_000  # more than three 32 KiB blocks in one config record
    with TrialRun(_cfg(tmp_path), 0, {"notes": big}) as run:
        run.finish("complete", {})
    got = read_run(run.path)
    assert got.config["notes"] == big
    path = run_file(run.path)
    data = bytearray(path.read_bytes())
    data[40_000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(OfflineRunError, match="CRC mismatch"):
        list(read_records(path))


def test_study_run_trials_table_leaves_out_per_clip_outcomes(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="study-a")
    outcomes = outcome_attrs(1, np.arange(4000) % 3 == 0, np.full(4000, 0.5))
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.set_user_attr("val_clips/1", outcomes["val_clips/1"])
    trial.set_user_attr("epochs_run", 1)
    study.tell(trial, 0.5)
    got = read_run(tracking.log_study_run(_cfg(tmp_path), study, None, []))
    (row,) = read_table(_tables_by_key(got)["study/trials"])
    assert json.loads(row["user_attrs"]) == {"epochs_run": 1}


def test_tracking_error_is_a_user_error_so_the_cli_prints_one_line():
    assert issubclass(TrackingError, UserError)
    assert not issubclass(TrackingError, ValueError | RuntimeError)

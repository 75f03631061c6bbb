"""bench/gpu_study.py: the study it runs is the project's own, with the budget it was given."""

import json
import re

import pytest
import yaml

from bench import gpu_study


def test_definition_points_at_the_synthetic_set_and_prunes_by_median(tmp_path):
    source = tmp_path / "in.yaml"
    source.write_text(gpu_study.DEFAULT_STUDY.read_text().replace("kind: median", "kind: none"))
    target = tmp_path / "out.yaml"
    gpu_study.write_definition(source, target, "shards/*.tfrecord", tmp_path / "cache")
    raw = yaml.safe_load(target.read_text())
    original = yaml.safe_load(gpu_study.DEFAULT_STUDY.read_text())
    assert raw["data"]["pattern"] == "shards/*.tfrecord"
    assert raw["data"]["cache_dir"] == str(tmp_path / "cache")
    assert raw["data"]["split"] == original["data"]["split"]
    assert raw["pruner"]["kind"] == "median"
    assert raw["space"] == original["space"]


@pytest.mark.slow
def test_tiny_run_holds_the_trial_budget_and_reports_no_gpu_on_cpu(tmp_path, capsys):
    code = gpu_study.main(
        [
            "--classes",
            "3",
            "--clips-per-class",
            "25",
            "--frames",
            "8",
            "--dim",
            "8",
            "--trials",
            "2",
            "--epochs",
            "1",
            "--jobs-list",
            "1",
            "--throughput-epochs",
            "1",
            "--write-workers",
            "1",
            "--device",
            "cpu",
            "--workdir",
            str(tmp_path),
            "--json",
            str(tmp_path / "figures.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "75 clips = 3 classes x 25" in out
    decoded = re.search(r"decode into the cache: .*\((\d+) clips", out)
    assert decoded and int(decoded.group(1)) == 75
    study = re.search(r"study --jobs 1: (\d+) trials .* ([\d.]+) trials/hour", out)
    assert study and int(study.group(1)) == 2 and float(study.group(2)) > 0
    assert "GPU: n/a (no GPU)" in out
    assert re.search(r"default config \(GRU 2x256, batch 256\): \d+ examples/s", out)
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["clips"] == 75 and figures["device"] == "cpu"
    (only,) = figures["studies"]
    assert only["jobs"] == 1 and only["trials"] == 2 and only["trials_per_hour"] > 0
    assert only["gpu_util"] is None

"""bench/train.py, as bench/gpu_check.sh runs it: whole epochs, variants in turns, one JSON."""

import json

from bench import train as bench_train


class Recorder:
    """A variant that records when it ran and trains 10 clips in 0.5 s per epoch."""

    def __init__(self, name: str, calls: list) -> None:
        self.name, self.calls = name, calls

    def epoch(self, epoch: int) -> tuple[int, float]:
        self.calls.append((self.name, epoch))
        return 10, 0.5


def test_variants_take_turns_in_a_rotating_order_after_one_warm_up_each():
    calls: list = []
    runners = {name: Recorder(name, calls) for name in bench_train.VARIANTS}
    speeds = bench_train.measure(runners, repeats=3, sync=lambda: None)
    assert calls == [
        ("naive", 0),
        ("ours", 0),
        ("bucketed", 0),
        ("naive", 1),
        ("ours", 1),
        ("bucketed", 1),
        ("ours", 2),
        ("bucketed", 2),
        ("naive", 2),
        ("bucketed", 3),
        ("naive", 3),
        ("ours", 3),
    ]
    assert speeds == {name: [20.0] * 3 for name in bench_train.VARIANTS}


def test_summary_is_the_median_with_its_range_and_per_repeat_ratios():
    figures = bench_train.summarise({"naive": [10.0, 20.0, 12.0], "ours": [30.0, 30.0, 60.0]})
    assert figures["naive"] == {
        "median": 12.0,
        "min": 10.0,
        "max": 20.0,
        "ratio_median": 1.0,
        "ratio_min": 1.0,
        "ratio_max": 1.0,
    }
    assert figures["ours"]["median"] == 30.0
    assert (
        figures["ours"]["ratio_min"],
        figures["ours"]["ratio_median"],
        figures["ours"]["ratio_max"],
    ) == (1.5, 3.0, 5.0)


def test_toy_run_trains_every_variant_on_the_same_clips_and_writes_json(
    tmp_path, capsys, one_torch_thread
):
    out = tmp_path / "train.json"
    assert (
        bench_train.main(
            [
                "--device",
                "cpu",
                "--clips",
                "12",
                "--batch-size",
                "4",
                "--frames",
                "10",
                "--dim",
                "8",
                "--hidden",
                "8",
                "--repeats",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["clips"] == 12 and figures["repeats"] == 2
    assert set(figures["examples_per_s"]) == set(bench_train.VARIANTS)
    for f in figures["examples_per_s"].values():
        assert 0 < f["min"] <= f["median"] <= f["max"]
    assert figures["examples_per_s"]["naive"]["ratio_median"] == 1.0
    printed = capsys.readouterr().out
    assert "2 timed epochs of 12 clips per variant" in printed
    assert printed.count("x naive (range") == 3

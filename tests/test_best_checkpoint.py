"""best.pt holds the best trial's weights even when trials finish and offer out of order."""

from __future__ import annotations

import fcntl
import multiprocessing
import random
import threading
from pathlib import Path

import optuna
import torch

from models.checkpoint import load_checkpoint
from models.rnn import ModelSpec, build_model
from search.best_checkpoint import BestCheckpoint

SPEC = ModelSpec(kind="rnn", input_dim=4, num_classes=3, hidden=4)


def _study() -> optuna.Study:
    return optuna.create_study(study_name="s", direction="maximize")


def _model(value: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(SPEC)
    with torch.no_grad():  # the weights say which offer wrote them
        next(model.parameters()).fill_(value)
    return model


def _held(path: Path) -> tuple[float, float, int]:
    model, _, extra = load_checkpoint(path)
    weight = round(float(next(model.parameters()).flatten()[0]), 4)  # float32 of the value
    return extra["value"], weight, extra["trial_number"]


def test_a_worse_trial_offered_before_the_better_is_told_does_not_overwrite(tmp_path):
    study = _study()  # no trial told yet: study.best_value knows of neither offer
    best = BestCheckpoint(tmp_path / "best.pt")
    assert best.offer(study, 1, 0.9, _model(0.9), SPEC)
    assert not best.offer(study, 2, 0.5, _model(0.5), SPEC)
    assert _held(best.path) == (0.9, 0.9, 1)
    assert best.offer(study, 3, 0.95, _model(0.95), SPEC)
    assert _held(best.path) == (0.95, 0.95, 3)


def test_a_leftover_file_of_another_study_does_not_block_offers(tmp_path):
    other = optuna.create_study(study_name="other", direction="maximize")
    best = BestCheckpoint(tmp_path / "best.pt")
    assert best.offer(other, 0, 0.99, _model(0.99), SPEC)
    assert best.offer(_study(), 0, 0.1, _model(0.1), SPEC)
    assert _held(best.path)[0] == 0.1


def test_an_offer_waits_for_the_file_lock_another_process_holds(tmp_path):
    best = BestCheckpoint(tmp_path / "best.pt")
    study = _study()
    best.offer(study, 0, 0.5, _model(0.5), SPEC)
    returned = []
    # A second instance stands for another worker process: it shares only the file lock.
    with open(f"{best.path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        worker = threading.Thread(
            target=lambda: returned.append(
                BestCheckpoint(best.path).offer(study, 1, 0.7, _model(0.7), SPEC)
            )
        )
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive() and not returned, "offer went ahead while the lock was held"
        assert _held(best.path)[0] == 0.5
        fcntl.flock(handle, fcntl.LOCK_UN)
    worker.join()
    assert returned == [True] and _held(best.path)[0] == 0.7


def _offer_all(path: str, values: list[float], start, accepted) -> None:
    torch.set_num_threads(1)
    study = optuna.create_study(study_name="s", direction="maximize")
    best = BestCheckpoint(Path(path))
    start.wait()
    mine = [v for v in values if best.offer(study, round(v * 1000), v, _model(v), SPEC)]
    accepted.put(mine)


def test_two_processes_offering_in_random_order_leave_the_best(tmp_path):
    values = [round(0.01 * i, 2) for i in range(1, 41)]
    random.Random(4).shuffle(values)
    ctx = multiprocessing.get_context("spawn")
    start, accepted = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_offer_all, args=(str(tmp_path / "best.pt"), part, start, accepted))
        for part in (values[::2], values[1::2])
    ]
    for p in procs:
        p.start()
    start.set()
    per_process = [accepted.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    top = max(values)
    assert _held(tmp_path / "best.pt") == (top, top, round(top * 1000))
    for mine in per_process:  # each accepted offer beat everything the file held before it
        assert mine == sorted(set(mine))

"""The study definition: the shipped file loads, and every mistake is one clear StudyError."""

import copy

import pytest
import yaml

from search.definition import load_definition, parse_definition
from search.errors import StudyError

SHIPPED = "studies/ucf101_rnn.yaml"


def _raw() -> dict:
    with open(SHIPPED) as f:
        return yaml.safe_load(f)


def test_shipped_definition_searches_the_required_space():
    d = load_definition(SHIPPED)
    assert {"cell", "layers", "hidden", "lr", "clip_norm"} <= set(d.searched())
    assert set(d.param("cell").choices) == {"lstm", "gru"}
    assert (d.param("layers").low, d.param("layers").high) == (1, 3)
    assert (d.param("hidden").low, d.param("hidden").high) == (64, 512)
    lr = d.param("lr")
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)
    clip = d.param("clip_norm")
    assert (clip.low, clip.high, clip.log) == (0.1, 10.0, True)
    assert d.pruner.kind == "paired" and d.sampler.kind == "tpe"
    assert set(d.param("batch_size").choices) == {16, 32, 64}
    assert d.train.max_epochs == d.train.epochs == 40 and d.train.patience == 6


def _old_epochs(raw: dict, value) -> None:
    """Give the budget under its older name, `epochs`."""
    del raw["train"]["max_epochs"]
    raw["train"]["epochs"] = value


def test_older_train_epochs_key_reads_as_max_epochs():
    raw = _raw()
    _old_epochs(raw, 12)
    d = parse_definition(raw)
    assert d.train.max_epochs == 12 and d.train.epochs == 12


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(colour="blue"), "unknown key(s) colour"),
        (lambda r: r["space"].update(momentum={"low": 0, "high": 1}), "unknown parameter"),
        (lambda r: r["space"].update(layers={"low": 3, "high": 1}), "low 3 is above high 1"),
        (lambda r: r["space"].update(dropout={"low": 0.0, "high": 0.5, "log": True}), "log range"),
        (lambda r: r["space"].update(cell={"choices": ["lstm", "transformer"]}), "cell must be"),
        (lambda r: r["space"].update(hidden={"low": 64}), "needs both low and high"),
        (lambda r: r["space"].update(dropout={"low": 0.0, "high": 2.0}), "outside the possible"),
        (lambda r: r["space"].pop("lr"), "space.lr is missing"),
        (lambda r: r["pruner"].update(warmup_epoch=3), "unknown key(s) warmup_epoch"),
        (lambda r: _old_epochs(r, 0), "train.epochs in older files) must be >= 1"),
        (lambda r: _old_epochs(r, "ten"), "train.max_epochs must be int"),
        (lambda r: r["train"].update(epochs=5), "max_epochs or its older name epochs, not both"),
        (lambda r: r["train"].update(patience=-1), "train.patience must be >= 0"),
        (lambda r: r["train"].update(min_loss_gain=-0.01), "train.min_loss_gain must be >= 0"),
        (lambda r: r["pruner"].update(kind="asha"), "pruner.kind must be one of paired, median"),
        (lambda r: r["pruner"].update(metric="top5"), "pruner.metric must be top1 or loss"),
        (lambda r: r["pruner"].update(reference="mean"), "pruner.reference must be median or"),
        (lambda r: r["pruner"].update(alpha=0), "pruner.alpha must be between 0 and 1"),
        (lambda r: r["pruner"].update(alpha=1.5), "pruner.alpha must be between 0 and 1"),
        (lambda r: r["pruner"].update(slack=0.5), "pruner.slack must be at least 1"),
        (lambda r: r["pruner"].update(min_resource=0), "pruner.min_resource must be at least 1"),
        (lambda r: r["pruner"].update(reduction_factor=1), "reduction_factor must be at least 2"),
        (lambda r: r["data"].update(split=4), "data.split must be 1, 2 or 3"),
    ],
)
def test_bad_definition_is_one_clear_error(edit, message):
    raw = copy.deepcopy(_raw())
    edit(raw)
    with pytest.raises(StudyError, match=None) as info:
        parse_definition(raw, where="x.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("x.yaml")


def test_missing_and_malformed_files_are_study_errors(tmp_path):
    with pytest.raises(StudyError, match="does not exist"):
        load_definition(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: [unclosed")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_definition(bad)


def test_a_single_value_fixes_a_parameter():
    raw = _raw()
    raw["space"]["cell"] = "gru"
    d = parse_definition(raw)
    assert d.param("cell").fixed and d.param("cell").value == "gru"
    assert "cell" not in d.searched()

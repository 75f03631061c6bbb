"""Confusion-matrix PNGs and the best trial's files as Optuna artifacts."""

import numpy as np
import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
from PIL import Image
from study_factory import CLASS_NAMES, confusion_matrix, make_study

from search.artifacts import attach_best_artifacts, render_confusion_png, row_normalised

VIRIDIS_TOP = (253, 231, 37)  # colour of a share of 1.0
VIRIDIS_MID = (33, 144, 141)  # colour of a share of 0.5


def _pixels_of(path, colour) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    return np.argwhere((rgb == np.array(colour, dtype=np.uint8)).all(axis=-1))  # (k, 2) y, x


def _bbox_hw(points: np.ndarray) -> tuple[int, int]:
    (y0, x0), (y1, x1) = points.min(axis=0), points.max(axis=0)
    return int(y1 - y0 + 1), int(x1 - x0 + 1)


def test_row_normalised_divides_each_row_by_its_sum_and_keeps_empty_rows_zero():
    norm = row_normalised(np.array([[3, 1], [0, 0]]))
    assert norm.tolist() == [[0.75, 0.25], [0.0, 0.0]]


def test_confusion_png_colours_one_full_cell_as_one_square(tmp_path):
    conf = np.zeros((3, 3), dtype=np.int64)
    conf[0, 0] = 7  # row 0 all correct; rows 1 and 2 have no clips
    path = render_confusion_png(conf, ["background", "A", "B"], tmp_path / "cm.png")
    top = _pixels_of(path, VIRIDIS_TOP)
    h, w = _bbox_hw(top)
    assert h == w and h * w == len(top) and h >= 10


def test_confusion_png_normalises_per_row(tmp_path):
    conf = np.array([[5, 5, 0], [0, 0, 0], [0, 0, 0]])
    path = render_confusion_png(conf, ["background", "A", "B"], tmp_path / "cm.png")
    mid = _pixels_of(path, VIRIDIS_MID)
    h, w = _bbox_hw(mid)
    assert w == 2 * h and len(mid) == h * w  # two side-by-side cells at 0.5
    assert len(_pixels_of(path, VIRIDIS_TOP)) == 0


def test_ucf101_sized_png_fits_a_screen_with_labels_and_huge_ones_drop_labels(tmp_path):
    labelled = render_confusion_png(confusion_matrix(), CLASS_NAMES, tmp_path / "102.png")
    many = [f"class{i}" for i in range(400)]
    bare = render_confusion_png(np.eye(400, dtype=np.int64), many, tmp_path / "400.png")

    def text_pixels_at_left(path) -> int:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        band = rgb[200:, :60]  # below the title, where row labels start
        return int((band < 40).all(axis=-1).sum())  # black text; no viridis colour is this dark

    width, height = Image.open(labelled).size
    assert max(width, height) <= 1600
    assert text_pixels_at_left(labelled) > 100  # row labels drawn
    assert text_pixels_at_left(bare) == 0  # 3-px rows leave no room for text


def test_confusion_png_rejects_names_that_do_not_match_the_matrix(tmp_path):
    with pytest.raises(ValueError, match="3 class names for a 2x2"):
        render_confusion_png(np.eye(2), ["a", "b", "c"], tmp_path / "cm.png")


@pytest.fixture
def study(tmp_path):
    return make_study(f"sqlite:///{tmp_path / 'study.db'}")


def _files(tmp_path):
    png = render_confusion_png(confusion_matrix(4), CLASS_NAMES[:5], tmp_path / "confusion.png")
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"\x80checkpoint bytes")
    return png, ckpt


def _study_files(study) -> dict[str, str]:
    return {m.filename: m.artifact_id for m in get_all_artifact_meta(study)}


def test_a_finished_trials_files_go_to_the_study_named_after_it_and_download_intact(
    study, tmp_path
):
    png, ckpt = _files(tmp_path)
    store_dir = tmp_path / "artifacts"
    best = study.best_trial.number
    ids = attach_best_artifacts(study, best, [png, ckpt], store_dir)

    metas = {m.artifact_id: m for m in get_all_artifact_meta(study)}  # storage order is by key
    assert {i: metas[i].filename for i in ids} == {
        ids[0]: f"trial{best}-confusion.png",
        ids[1]: f"trial{best}-best.pt",
    }
    assert metas[ids[0]].mimetype == "image/png"
    store = FileSystemArtifactStore(store_dir)
    for artifact_id, source in zip(ids, (png, ckpt), strict=True):
        out = tmp_path / f"down-{artifact_id}"
        download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(out))
        assert out.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in store_dir.iterdir()) == sorted(ids)  # no temp files left


def test_a_running_trials_files_become_its_own_artifacts(study, tmp_path):
    png, _ = _files(tmp_path)
    trial = study.ask()
    (artifact_id,) = attach_best_artifacts(study, trial, [png], tmp_path / "a")
    metas = get_all_artifact_meta(trial)
    assert [(m.artifact_id, m.filename) for m in metas] == [(artifact_id, "confusion.png")]
    assert _study_files(study) == {}


def test_attaching_the_same_files_again_reuses_their_artifacts(study, tmp_path):
    png, ckpt = _files(tmp_path)
    first = attach_best_artifacts(study, study.best_trial, [png, ckpt], tmp_path / "a")
    again = attach_best_artifacts(study, study.best_trial, [png, ckpt], tmp_path / "a")
    assert again == first
    assert len(get_all_artifact_meta(study)) == 2


def test_a_changed_file_is_attached_as_a_new_artifact(study, tmp_path):
    _, ckpt = _files(tmp_path)
    (first,) = attach_best_artifacts(study, 0, [ckpt], tmp_path / "a")
    ckpt.write_bytes(b"retrained weights")
    (second,) = attach_best_artifacts(study, 0, [ckpt], tmp_path / "a")
    assert second != first


def test_a_missing_file_raises_before_anything_is_uploaded(study, tmp_path):
    png, _ = _files(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        attach_best_artifacts(study, 0, [png, tmp_path / "nope.pt"], tmp_path / "a")
    assert _study_files(study) == {}


def test_an_unknown_trial_number_is_a_clear_error(study, tmp_path):
    png, _ = _files(tmp_path)
    with pytest.raises(ValueError, match="no trial number 99"):
        attach_best_artifacts(study, 99, [png], tmp_path / "a")


def test_trial_numbers_count_within_the_study_in_a_shared_storage(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    make_study(storage, study_name="other")  # trial ids of the second study start after these
    study = make_study(storage, study_name="second")
    trial = study.ask()  # number 6 here, trial id 13 in the storage
    png, _ = _files(tmp_path)
    attach_best_artifacts(study, trial.number, [png], tmp_path / "a")
    with_files = [t.number for t in study.trials if get_all_artifact_meta(t, storage=storage)]
    assert with_files == [trial.number]

"""A resume continues the same run on the same data, or says what differs and stops before it
touches the run directory."""

import json
import shutil

import pytest
from PIL import Image

from ganforge.snapshots import load_snapshot
from ganforge.training import TrainingError, TrainOptions, train

TINY = dict(resolution=8, batch=8, model_opts={"base_channels": 8}, tick=0.016, sample_every=0.016, snap=0.016)


def image_folder(root, classes=("ant", "bee"), per_class=6):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (40 * c, 20 * i, 100)).save(root / name / f"{i}.png")
    return root


def run_files(run):
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def test_a_snapshot_copied_in_from_another_run_of_the_same_model_is_refused_naming_both(tmp_path):
    first = train(TrainOptions(data="mnist", **TINY, kimg=0.032, outdir=str(tmp_path / "a")), progress=False)
    second = train(TrainOptions(data="mnist", **TINY, kimg=0.016, outdir=str(tmp_path / "b")), progress=False)
    shutil.copy(second / "latest.pt", first / "from-b.pt")
    before = run_files(first)
    ids = [json.loads((run / "training_options.json").read_text())["run_id"] for run in (first, second)]
    assert ids[0] and ids[1] and ids[0] != ids[1]
    assert load_snapshot(second)["options"]["run_id"] == ids[1]
    with pytest.raises(TrainingError, match=f"belongs to run {ids[1]}, the run directory {first} to run {ids[0]}"):
        train(TrainOptions(data="mnist", **TINY, kimg=0.064), resume=str(first / "from-b.pt"), explicit={"kimg"},
              progress=False)
    assert run_files(first) == before  # its stats.jsonl and latest.pt untouched
    # a run's own snapshot still resumes in it
    train(TrainOptions(data="mnist", **TINY, kimg=0.048), resume=str(first), explicit={"kimg"}, progress=False)
    assert load_snapshot(first)["images_seen"] == 48


def test_a_relative_data_path_is_stored_absolute_and_a_resume_reads_it_from_anywhere(tmp_path, monkeypatch):
    image_folder(tmp_path / "project" / "birds", per_class=10)
    image_folder(tmp_path / "elsewhere" / "birds", per_class=2)  # same relative name, other images
    monkeypatch.chdir(tmp_path / "project")
    run = train(TrainOptions(data="birds", **TINY, kimg=0.016, outdir=str(tmp_path / "runs")), progress=False)
    assert json.loads((run / "training_options.json").read_text())["data"] == str(tmp_path / "project" / "birds")
    monkeypatch.chdir(tmp_path / "elsewhere")
    train(TrainOptions(data="birds", **TINY, kimg=0.032), resume=str(run), explicit={"kimg"}, progress=False)
    resumed = (run / "log.txt").read_text().split("resuming", 1)[1].splitlines()[0]
    assert "20 images" in resumed, resumed


def remove_one_image(data):
    (data / "bee" / "5.png").unlink()


def rename_a_class_folder(data):
    (data / "bee").rename(data / "wasp")


def replace_one_image(data):
    Image.new("RGB", (16, 16), (1, 2, 3)).save(data / "ant" / "0.png")  # same name, another size on disk


@pytest.mark.parametrize("change,message", [
    (remove_one_image, "12 images then, 11 now"),
    (rename_a_class_folder, "2 classes then, 2 now; class(es) bee then, wasp now"),
    (replace_one_image, "its files changed (names, sizes or labels: fingerprint"),
])
def test_a_resume_onto_changed_data_says_what_differs_and_touches_nothing(tmp_path, change, message):
    data = image_folder(tmp_path / "data")
    run = train(TrainOptions(data=str(data), **TINY, kimg=0.016, outdir=str(tmp_path / "runs")), progress=False)
    change(data)
    before = run_files(run)
    with pytest.raises(TrainingError) as refused:
        train(TrainOptions(data=str(data), **TINY, kimg=0.032), resume=str(run), explicit={"kimg"}, progress=False)
    assert f"--data {data} is not the data the run was trained on" in str(refused.value)
    assert message in str(refused.value) and "\n" not in str(refused.value), str(refused.value)
    assert run_files(run) == before

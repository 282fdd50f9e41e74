"""`ganforge dataset`: any readable data to a resolution-fixed zip or folder that trains as it is."""

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ganforge.archive import convert
from ganforge.cli import main
from ganforge.data import DatasetError, load_dataset

from conftest import ganforge, one_line_error


def photo(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_class_folders_become_a_zip_with_the_same_images_and_labels(tmp_path):
    source = tmp_path / "src"
    for i, cls in enumerate(["cat", "dog", "dog"]):
        photo(source / cls / f"{i}.jpg", (40 + 8 * i, 30), (80 * i, 40, 200))
    (source / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    result = CliRunner().invoke(main, ["dataset", str(source), str(tmp_path / "pets.zip"), "--resolution", "16"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "3 images at 16x16, 2 classes; skipped 1 unreadable" in result.output
    original = load_dataset(str(source), 16)
    converted = load_dataset(str(tmp_path / "pets.zip"), 16)
    assert converted.class_names == original.class_names == ["cat", "dog"] and converted.labels == original.labels
    assert torch.equal(converted.images, original.images)  # lossless, nothing resized again
    import zipfile

    with zipfile.ZipFile(tmp_path / "pets.zip") as z:
        summary = json.loads(z.read("dataset.json"))
        assert all(Image.open(z.open(n)).size == (16, 16) for n in z.namelist() if n.endswith(".png"))
    assert summary["images"] == 3 and len(summary["skipped"]) == 1 and summary["skipped"][0].endswith("broken.png")


def test_a_captioned_layout_keeps_captions_labels_and_both_splits(tmp_path):
    source = tmp_path / "birds"
    (source / "text").mkdir(parents=True)
    (source / "classes.txt").write_text("finch\nwren\n")
    rows = ["image,label,split"]
    for i, (label, split) in enumerate([(0, "train"), (1, "train"), (1, "test")]):
        photo(source / "images" / "sub" / f"{i}.jpg", (64, 48), (50 * i, 100, 0))
        (source / "text" / "sub").mkdir(exist_ok=True)
        (source / "text" / "sub" / f"{i}.txt").write_text(f"a bird number {i}\nun oiseau — 鳥 {i}\n", encoding="utf-8")
        rows.append(f"images/sub/{i}.jpg,{label},{split}")
    (source / "split.csv").write_text("\n".join(rows) + "\n")
    summary = convert(str(source), tmp_path / "birds32", 32)
    assert summary["images"] == 3 and summary["captioned"]
    for split in ("train", "test"):
        a, b = load_dataset(str(source), 32, split=split), load_dataset(str(tmp_path / "birds32"), 32, split=split)
        assert a.captions == b.captions and a.labels == b.labels and b.class_names == ["finch", "wren"]
        assert torch.equal(a.images, b.images)


def test_an_existing_destination_or_a_captioned_zip_is_refused(tmp_path):
    source = tmp_path / "src"
    photo(source / "a.png", (20, 20), (1, 2, 3))
    (tmp_path / "taken.zip").write_bytes(b"")
    result = CliRunner().invoke(main, ["dataset", str(source), str(tmp_path / "taken.zip"), "--resolution", "8"])
    assert result.exit_code != 0 and "already exists" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["dataset", "mnist-captions", str(tmp_path / "c.zip"), "--resolution", "8"])
    assert result.exit_code != 0 and "converts to a folder" in result.output
    assert not (tmp_path / "c.zip").exists() and not (tmp_path / ".c.zip.tmp").exists()


def noisy_photos(folder, count, size=32):
    generator = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8).numpy()
        photo_path = folder / ("ab"[i % 2]) / f"{i}.png"
        photo_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(photo_path)


def test_lods_store_every_lower_level_read_in_place_of_the_full_images(tmp_path):
    from ganforge.data import RealStream
    from ganforge.models.pggan import crossfade_reals

    noisy_photos(tmp_path / "src", 6)
    for dest in ("lods.zip", "lods"):
        result = CliRunner().invoke(main, ["dataset", str(tmp_path / "src"), str(tmp_path / dest), "--resolution", "32",
                                           "--lods"])
        assert result.exit_code == 0 and "6 images at 32x32 (and 16x16, 8x8, 4x4), 2 classes" in result.output
        full = load_dataset(str(tmp_path / dest), 32, preload=False)
        assert len(full) == 6 and full.class_names == ["a", "b"] and full.levels == [4, 8, 16]  # .lod is not listed
        assert load_dataset(str(tmp_path / dest), 16, preload=False).levels == []  # converted at another size
        for level in (16, 8, 4):
            lazy, twin = RealStream(full, seed=3), RealStream(full, seed=3)
            small, labels = lazy.next_batch(4, level)
            large, same_labels = twin.next_batch(4)
            assert small.shape == (4, 3, level, level) and torch.equal(labels, same_labels)
            # what the model would have made of the full images, to within uint8 rounding
            pooled = (crossfade_reals(large.float(), level, 1.0) - small.float()).abs()
            assert pooled.max() <= 0.5 + 1e-4
        assert lazy.next_batch(4, 32)[0].shape == (4, 3, 32, 32)  # a level it lacks: full size


def test_a_progressive_run_on_stored_levels_resumes_exactly(tmp_path, monkeypatch):
    from ganforge.data import ImageDataset
    from ganforge.snapshots import load_snapshot
    from ganforge.training import TrainOptions, train

    monkeypatch.setattr("ganforge.data.PRELOAD_LIMIT_BYTES", 0)  # as a set too large for memory is read
    read, original = [], ImageDataset.read_bytes

    def recording(self, i):  # workers=0: every read happens in this process
        read.append(self.entries[i])
        return original(self, i)

    monkeypatch.setattr(ImageDataset, "read_bytes", recording)
    noisy_photos(tmp_path / "src", 8, size=16)
    convert(str(tmp_path / "src"), tmp_path / "lods.zip", 16, lods=True)
    options = dict(model="pggan", data=str(tmp_path / "lods.zip"), resolution=16, batch=4, workers=0, tick=0.008,
                   snap=0.016, sample_every=1, model_opts={"fmap_max": 8, "fmap_base": 32, "fade_kimg": 0.008,
                                                           "stab_kimg": 0.008})
    whole = train(TrainOptions(**options, kimg=0.064, outdir=str(tmp_path / "whole")), progress=False)
    part = train(TrainOptions(**options, kimg=0.032, outdir=str(tmp_path / "part")), progress=False)
    part = train(TrainOptions(**options, kimg=0.064, outdir=str(tmp_path / "part")), resume=str(part),
                 explicit={"kimg"}, progress=False)
    a, b = load_snapshot(whole), load_snapshot(part)
    assert a["stream_position"] == b["stream_position"] and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert {name.split("/")[1] for name in read if name.startswith(".lod/")} == {"4", "8"}  # the early phases
    assert any(not name.startswith(".lod/") for name in read)  # 16x16: the images themselves


def test_shards_hold_the_same_images_labels_and_captions_read_in_place(tmp_path):
    noisy_photos(tmp_path / "src", 10, size=16)
    result = CliRunner().invoke(main, ["dataset", str(tmp_path / "src"), str(tmp_path / "shards"), "--resolution", "16",
                                       "--shards", "4"])
    assert result.exit_code == 0 and "10 images at 16x16 in 3 shards, 2 classes" in result.output, result.output
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["000000.tar", "000001.tar", "000002.tar",
                                                                       "dataset.json"]
    original = load_dataset(str(tmp_path / "src"), 16)
    for data in (str(tmp_path / "shards"), str(tmp_path / "shards" / "{000000..000002}.tar")):
        shards = load_dataset(data, 16)
        assert shards.class_names == ["a", "b"] and shards.labels == original.labels and shards.channels == 3
        assert torch.equal(shards.images, original.images)
    one = load_dataset(str(tmp_path / "shards" / "000002.tar"), 16)
    assert torch.equal(one.images, original.images[8:])

    source = tmp_path / "birds"
    (source / "text").mkdir(parents=True)
    rows = ["image,label,split"]
    for i, (label, split) in enumerate([(0, "train"), (1, "train"), (1, "test")]):
        photo(source / "images" / f"{i}.jpg", (20, 20), (50 * i, 100, 0))
        (source / "text" / f"{i}.txt").write_text(f"a bird number {i}\nun oiseau — 鳥 {i}\n", encoding="utf-8")
        rows.append(f"images/{i}.jpg,{label},{split}")
    (source / "split.csv").write_text("\n".join(rows) + "\n")
    convert(str(source), tmp_path / "bird-shards", 16, shard_size=2)
    for split in ("train", "test"):
        a, b = load_dataset(str(source), 16, split=split), load_dataset(str(tmp_path / "bird-shards"), 16, split=split)
        assert a.captions == b.captions and a.labels == b.labels and torch.equal(a.images, b.images)


def test_shards_are_read_one_after_another_each_shuffled_and_resume_exactly(tmp_path, monkeypatch):
    from ganforge.data import RealStream
    from ganforge.snapshots import load_snapshot
    from ganforge.training import TrainOptions, train

    noisy_photos(tmp_path / "src", 12, size=16)
    convert(str(tmp_path / "src"), tmp_path / "shards", 16, shard_size=4)
    lazy = load_dataset(str(tmp_path / "shards"), 16, preload=False)
    order, _ = RealStream(lazy, seed=1).indices(0, 24)  # two epochs
    shard_of = [int(lazy.spans[i][0][-5]) for i in order.tolist()]
    runs = [shard_of[k:k + 4] for k in range(0, 24, 4)]
    assert all(len(set(run)) == 1 for run in runs) and sorted(r[0] for r in runs[:3]) == [0, 1, 2]
    assert order[:12].tolist() != order[12:].tolist()  # a new order each epoch

    monkeypatch.setattr("ganforge.data.PRELOAD_LIMIT_BYTES", 0)  # as a set too large for memory is read
    opts = dict(data=str(tmp_path / "shards"), model="dcgan", resolution=16, batch=8,
                model_opts={"base_channels": 4}, tick=0.016, snap=0.016, workers=2, augment="none")
    straight = train(TrainOptions(**opts, kimg=0.032, outdir=str(tmp_path / "a")), progress=False)
    first = train(TrainOptions(**opts, kimg=0.016, outdir=str(tmp_path / "b")), progress=False)
    resumed = train(TrainOptions(**opts, kimg=0.032), resume=str(first), explicit={"kimg"}, progress=False)
    a, b = load_snapshot(straight), load_snapshot(resumed)
    assert a["stream_position"] == b["stream_position"] == 32
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


def test_runs_from_shards_are_named_after_their_folder(tmp_path):
    from ganforge.training import TrainOptions, train
    from ganforge.training.rundir import dataset_desc

    noisy_photos(tmp_path / "photos64", 8, size=8)
    convert(str(tmp_path / "photos64"), tmp_path / "lsun256", 8, shard_size=4)
    run = train(TrainOptions(data=str(tmp_path / "lsun256" / "{000000..000001}.tar"), model="dcgan", resolution=8,
                             batch=8, model_opts={"base_channels": 4}, kimg=0.008, tick=0.008, augment="none",
                             outdir=str(tmp_path / "runs")), progress=False)
    assert run.name == "00000-dcgan-lsun256"
    assert dataset_desc("lsun256/000003.tar") == "lsun256" and dataset_desc("{000000..000003}.tar") == "shards"
    assert dataset_desc("photos.zip") == "photos" and dataset_desc("mnist") == "mnist"


def zip_of_images(path, names):
    import io
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            png = io.BytesIO()
            Image.new("RGB", (20, 20), (200, 10, 10)).save(png, format="PNG")
            z.writestr(name, png.getvalue())


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_zip_members_that_lead_outside_are_refused_and_nothing_is_written_outside(tmp_path):
    zip_of_images(tmp_path / "evil.zip", ["../../x/a.png", "ok/c.png"])
    (tmp_path / "work").mkdir()
    result = CliRunner().invoke(main, ["dataset", str(tmp_path / "evil.zip"), str(tmp_path / "work" / "out"),
                                       "--resolution", "16"])
    assert result.exit_code != 0 and "'../../x/a.png'" in result.output and "Traceback" not in result.output
    assert files_under(tmp_path) == ["evil.zip"]  # not beside out/, not anywhere
    zip_of_images(tmp_path / "abs.zip", ["/abs/b.png", "ok/c.png"])
    result = CliRunner().invoke(main, ["dataset", str(tmp_path / "abs.zip"), str(tmp_path / "out.zip"),
                                       "--resolution", "16"])
    assert result.exit_code != 0 and "'/abs/b.png'" in result.output and not (tmp_path / "out.zip").exists()


def test_a_written_name_that_leads_outside_is_refused(tmp_path):
    from ganforge.archive import FolderWriter, ZipWriter

    for writer in (ZipWriter(tmp_path / "a.zip"), FolderWriter(tmp_path / "b")):
        for name in ("../x.png", "/x.png", "c/../../x.png"):
            with pytest.raises(DatasetError, match="leads outside"):
                writer.write(name, b"")
        writer.abandon()
    assert files_under(tmp_path) == []


def test_split_csv_rows_shard_lists_and_tar_members_must_stay_inside_their_root(tmp_path):
    import tarfile

    photo(tmp_path / "outside.png", (20, 20), (1, 2, 3))
    source = tmp_path / "captioned"
    photo(source / "images" / "a.png", (20, 20), (1, 2, 3))
    (source / "text").mkdir()
    (source / "split.csv").write_text("image,label,split\nimages/a.png,0,train\n../outside.png,0,train\n")
    with pytest.raises(DatasetError, match=r"split.csv:3: entry '../outside.png' leads outside"):
        load_dataset(str(source), 16)
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        tar.add(tmp_path / "outside.png", arcname="../up.png")
    with pytest.raises(DatasetError, match="entry '../up.png' leads outside"):
        load_dataset(str(tmp_path / "evil.tar"), 16)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "dataset.json").write_text(json.dumps({"shards": ["../evil.tar"]}))
    with pytest.raises(DatasetError, match="entry '../evil.tar' leads outside"):
        load_dataset(str(shards), 16)


@pytest.mark.parametrize("name", ["..", "../a.png", "/etc/a.png", "a/../../b.png", "a\\..\\..\\b.png", "C:/a.png", ""])
def test_inside_root_refuses_names_that_leave_the_root(name):
    from ganforge.data import inside_root

    with pytest.raises(DatasetError, match="leads outside"):
        inside_root(name, "data.zip")


def test_inside_root_keeps_relative_names():
    from ganforge.data import inside_root

    assert inside_root("./cat/a.png", "data.zip") == "cat/a.png" and inside_root("a..b.png", "x") == "a..b.png"


def test_a_users_file_at_a_temporary_looking_name_is_never_deleted(tmp_path):
    source = tmp_path / "src"
    photo(source / "a.png", (20, 20), (1, 2, 3))
    (tmp_path / "nd" / ".mine.tmp").mkdir(parents=True)
    (tmp_path / "nd" / ".mine.tmp" / "notes.txt").write_text("mine")
    (tmp_path / "nd" / ".mine.zip.tmp").write_text("mine too")
    for dest in ("mine", "mine.zip"):
        result = CliRunner().invoke(main, ["dataset", str(source), str(tmp_path / "nd" / dest), "--resolution", "8"])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "nd" / ".mine.tmp" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "nd" / ".mine.zip.tmp").read_text() == "mine too"
    assert sorted(p.name for p in (tmp_path / "nd").iterdir()) == [".mine.tmp", ".mine.zip.tmp", "mine", "mine.zip"]
    assert len(load_dataset(str(tmp_path / "nd" / "mine"), 8)) == 1 and len(load_dataset(str(tmp_path / "nd" / "mine.zip"), 8)) == 1
    assert (tmp_path / "nd" / "mine").stat().st_mode & 0o777 == 0o777 & ~current_umask()


def current_umask() -> int:
    import os

    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_an_abandoned_conversion_removes_only_its_own_temporary(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "bad.png").write_bytes(b"not a png")
    (tmp_path / ".out.tmp").mkdir()
    result = CliRunner().invoke(main, ["dataset", str(source), str(tmp_path / "out"), "--resolution", "8"])
    assert result.exit_code != 0 and "no readable image" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.tmp", "src"]


# --- faults a user's machine causes: each one line, nothing half-made left behind ---------------------
def test_an_unreadable_source_is_one_line_naming_it(tmp_path):
    import shutil

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv, to run ganforge without the right to read every file")
    source = tmp_path / "src"
    photo(source / "a.png", (20, 20), (1, 2, 3))
    source.chmod(0)
    try:  # root reads anything: drop that right for the command alone
        result = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m",
                                 "ganforge", "dataset", str(source), str(tmp_path / "out.zip"), "--resolution", "8"],
                                capture_output=True, text=True)
    finally:
        source.chmod(0o755)
    assert "cannot read" in one_line_error(result) and "Permission denied" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_read_only_destination_is_one_line(tmp_path, tmpfs):
    photo(tmp_path / "src" / "a.png", (20, 20), (1, 2, 3))
    read_only = tmpfs("ro", read_only=True)
    for dest in ("out.zip", "out", "shards"):
        extra = ["--shards", "2"] if dest == "shards" else []
        message = one_line_error(ganforge("dataset", tmp_path / "src", read_only / dest, "--resolution", "8", *extra))
        assert f"{read_only / dest}: cannot write there (Read-only file system)" in message


@pytest.mark.parametrize("dest,extra", [("out.zip", []), ("out", []), ("shards", ["--shards", "40"])])
def test_a_full_disk_is_one_line_and_the_partial_conversion_is_removed(tmp_path, tmpfs, dest, extra):
    source = tmp_path / "src"
    source.mkdir()
    noise = torch.Generator().manual_seed(0)
    for i in range(100):  # 100 x 12 kB of incompressible PNG: more than the 1 MiB disk holds
        pixels = torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8, generator=noise).numpy()
        Image.fromarray(pixels).save(source / f"{i}.png")
    disk = tmpfs("disk", size="1m")
    message = one_line_error(ganforge("dataset", source, disk / dest, "--resolution", "64", *extra))
    assert f"{disk / dest}: cannot write there (No space left on device); the partial conversion was removed" in message
    assert list(disk.iterdir()) == []  # no temporary left filling the disk


def test_a_destination_inside_the_source_folder_is_refused(tmp_path):
    source = tmp_path / "src"
    photo(source / "cat" / "a.png", (20, 20), (1, 2, 3))
    photo(source / "dog" / "b.png", (20, 20), (3, 2, 1))
    for dest in (source / "conv", source / "cat" / "deeper"):
        result = CliRunner().invoke(main, ["dataset", str(source), str(dest), "--resolution", "8"])
        assert result.exit_code == 1 and f"{dest}: inside the source folder" in result.output
    assert sorted(p.name for p in source.iterdir()) == ["cat", "dog"] and load_dataset(str(source), 8).class_names == ["cat", "dog"]


def shard(path, members: dict[str, bytes]):
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("members,message", [
    ({"a.json": b"[1, 2]"}, "member a.json: expected a JSON object"),
    ({"a.json": b'{"split": 5}'}, "member a.json: expected a JSON object"),
    ({"a.json": b"{nope"}, "member a.json: not JSON"),
    ({"a.cls": b"-5", "b.cls": b"1"}, "member a.cls: '-5' is not a class number"),
    ({"a.cls": b"seven", "b.cls": b"1"}, "member a.cls: 'seven' is not a class number"),
    ({"b.cls": b"1"}, "a has no .cls label while others have one"),  # a's label would read as the last class
])
def test_malformed_shard_members_are_one_line_naming_the_member(tmp_path, members, message):
    import io

    png = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(png, format="PNG")
    tar = shard(tmp_path / "000000.tar", {"a.png": png.getvalue(), "b.png": png.getvalue(), **members})
    result = CliRunner().invoke(main, ["dataset", str(tar), str(tmp_path / "out"), "--resolution", "8"])
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()

"""`ganforge dataset`: any readable data to a resolution-fixed zip or folder that trains as it is."""

import json

import torch
from click.testing import CliRunner
from PIL import Image

from ganforge.archive import convert
from ganforge.cli import main
from ganforge.data import load_dataset


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

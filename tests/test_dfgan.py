import pytest
import torch

from ganforge.data import load_dataset
from ganforge.models import build_model
from ganforge.models.dfgan import Affine, DFBlock, hinge_d_loss, ma_gp, truncated_noise, widths
from ganforge.models.text import BiLSTMEncoder, build_vocab, tokenize
from ganforge.training import TrainingError, TrainOptions, train
from ganforge.snapshots import load_snapshot


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("mnist-captions", 16)


def small(resolution=16, **kw):
    return build_model("dfgan", dict(resolution=resolution, channels=1, nf=4, **kw))


def test_dfblock_is_the_identity_affine_at_initialisation():
    torch.manual_seed(0)
    x, cond = torch.randn(3, 8, 5, 5), torch.randn(3, 20)
    assert torch.equal(Affine(20, 8)(x, cond), x)
    lrelu = torch.nn.functional.leaky_relu
    assert torch.allclose(DFBlock(20, 8)(x, cond), lrelu(lrelu(x, 0.2), 0.2))


def test_ma_gp_against_a_hand_computed_gradient():
    # D(x, e) = sum(0.5 x) + sum(e): gradient 0.5 on 4 pixels and 1 on 3 sentence dims, norm sqrt(1 + 3) = 2
    x = torch.randn(5, 1, 2, 2, requires_grad=True)
    e = torch.randn(5, 3, requires_grad=True)
    scores = (0.5 * x).flatten(1).sum(1) + e.sum(1)
    assert ma_gp(scores, x, e).item() == pytest.approx(2 * 2**6)
    assert ma_gp((0.5 * x).flatten(1).sum(1) + e.sum(1), x, e, k=1.0, p=2.0).item() == pytest.approx(4.0)


def test_hinge_loss_hand_computed():
    real, fake, mis = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0]), torch.tensor([1.0, -1.0])
    # relu(1 - real) = (0, 0.5) -> 0.25; relu(1 + fake) = (0, 1) -> 0.5; relu(1 + mis) = (2, 0) -> 1.0
    assert hinge_d_loss(real, fake, mis).item() == pytest.approx(0.25 + 0.5 * (0.5 + 1.0))


@pytest.mark.parametrize("resolution,blocks", [(64, 4), (128, 5), (256, 6)])
def test_shapes_and_widths(resolution, blocks):
    assert widths(256, 32) == [256, 256, 256, 256, 128, 64, 32]
    model = build_model("dfgan", dict(resolution=resolution, channels=3, nf=2))
    assert len(model.G.blocks) == blocks and len(model.D.blocks) == blocks
    z, e = torch.randn(2, 100), torch.randn(2, 384)
    images = model.G(z, e)
    assert images.shape == (2, 3, resolution, resolution)
    assert model.D(images, e).shape == (2,)


def test_mismatched_captions_never_repeat_the_images_own_text(digits16):
    model = small()
    model.prepare(digits16, "cpu", resumed=False)
    g = torch.Generator().manual_seed(0)
    flat = [c for caps in digits16.captions for c in caps]
    for _ in range(20):
        images = torch.randint(0, len(digits16), (32,), generator=g)
        images[:4] = images[4]  # duplicates in a batch, and all same-class captions are shared texts
        mismatch = model.captions.mismatched(images, g)
        for i, c in zip(images.tolist(), mismatch.tolist()):
            assert flat[c] not in digits16.captions[i]
        matched = model.captions.pick(images, g)
        assert all(flat[c] in digits16.captions[i] for i, c in zip(images.tolist(), matched.tolist()))


def test_output_is_linear_by_default_and_the_papers_tanh_on_request():
    z, e = torch.randn(4, 100), torch.randn(4, 384)
    linear, paper = small(), small(tanh=True)
    paper.G.load_state_dict(linear.G.state_dict())
    with torch.no_grad():
        linear.G.to_rgb.bias.fill_(5.0)  # far past where tanh saturates
        paper.G.to_rgb.bias.fill_(5.0)
        out, out_tanh = linear.G(z, e), paper.G(z, e)
    assert out.max() > 2 and torch.allclose(out_tanh, torch.tanh(out))


def test_sentence_vectors_are_centred_and_scaled_and_kept_in_snapshots(digits16, tmp_path):
    model = small()
    model.prepare(digits16, "cpu", resumed=False)
    distinct = list(dict.fromkeys(c for caps in digits16.captions for c in caps))
    emb = model.encode_text(distinct)
    assert emb.mean(0).abs().max() < 1e-5
    assert emb.pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)  # unit variance per dimension on average
    raw_norm = model._encoder[0](distinct[:1]).norm().item()
    assert raw_norm == pytest.approx(1.0, abs=1e-4) and emb[0].norm() > 10  # as long as z (~10), not 1
    run = train(TrainOptions(**TINY, kimg=0.016, outdir=str(tmp_path)), progress=False)
    state = load_snapshot(run)["state"]
    assert state["text_scale"].item() != 1.0 and state["text_mean"].abs().sum() > 0


def test_truncated_noise_is_bounded():
    z = truncated_noise(1000, 100, 2.0, 0.88, torch.Generator().manual_seed(0))
    assert z.abs().max() <= 2.0 * 0.88 + 1e-6 and 0.6 < z.std() < 0.88


def test_tokenizer_and_bilstm_keep_every_script():
    assert tokenize("A Small-bird, 鳥が飛ぶ! птица") == ["a", "small", "-", "bird", ",", "鳥が飛ぶ", "!", "птица"]
    vocab = build_vocab(["a red bird", "鳥が飛ぶ", "птица летит"])
    enc = BiLSTMEncoder(vocab).eval()
    ids, _ = enc.ids(["птица", "鳥が飛ぶ", "unknown"])
    assert ids[0, 0] == vocab.index("птица") and ids[1, 0] == vocab.index("鳥が飛ぶ") and ids[2, 0] == 1
    assert enc(["a red bird", "鳥が飛ぶ"]).shape == (2, 256)


def test_needs_captions(tmp_path):
    with pytest.raises(TrainingError, match="needs captions"):
        train(TrainOptions(model="dfgan", data="mnist", resolution=16, kimg=0.01, outdir=str(tmp_path)),
              progress=False)
    assert not any(tmp_path.iterdir())  # refused before making a run directory


TINY = dict(model="dfgan", data="mnist-captions", resolution=16, batch=16, tick=0.064, sample_every=0.128,
            snap=0.064, model_opts={"nf": 4})


def test_resume_is_bit_for_bit(tmp_path):
    straight = train(TrainOptions(**TINY, kimg=0.128, outdir=str(tmp_path / "a")), progress=False)
    first = train(TrainOptions(**TINY, kimg=0.064, outdir=str(tmp_path / "b")), progress=False)
    train(TrainOptions(**TINY, kimg=0.128), resume=str(first), explicit={"kimg"}, progress=False)
    a, b = load_snapshot(straight), load_snapshot(first)
    assert a["step"] == b["step"] == 8
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k


def test_bilstm_encoder_run_and_prompts(tmp_path):
    from ganforge.inference import generate_from_prompts, load_model

    opts = dict(TINY, model_opts={"nf": 4, "text_encoder": "bilstm", "encoder_epochs": 1})
    run = train(TrainOptions(**opts, kimg=0.032, outdir=str(tmp_path)), progress=False)
    model = load_model(run)
    assert "seven" in model.config["vocab"]
    images = generate_from_prompts(model, ["a handwritten digit seven", "the number 3 written by hand", "鳥"], 2)
    assert images.shape == (6, 1, 16, 16)
    again = train(TrainOptions(**opts, kimg=0.064), resume=str(run), explicit={"kimg"}, progress=False)
    assert load_snapshot(again)["model_config"]["vocab"] == model.config["vocab"]


@pytest.mark.slow
def test_short_training_learns_which_caption_belongs_to_an_image(tmp_path, digits16):
    """A short run on captioned digits (BiLSTM encoder trained on them): D scores real images higher with
    their own captions than with mismatched ones, the matching-aware part of DF-GAN's loss at work
    (tests/test_learning.py checks G; benchmarks/quality_cpu.py reads the prompted digits back)."""
    from ganforge.inference import load_model

    run = train(TrainOptions(model="dfgan", data="mnist-captions", resolution=16, batch=32, kimg=12, tick=2,
                             sample_every=12, snap=12, model_opts={"nf": 8, "text_encoder": "bilstm", "encoder_epochs": 2},
                             outdir=str(tmp_path)), progress=False)
    model = load_model(run)
    model.prepare(digits16, "cpu", resumed=True)

    def matched_minus_mismatched(m):
        g = torch.Generator().manual_seed(3)
        images = torch.randint(0, len(digits16), (256,), generator=g)
        reals = digits16.images[images].float() / 127.5 - 1
        with torch.no_grad():
            own = m.D(reals, m.captions.embeddings[m.captions.pick(images, g)])
            other = m.D(reals, m.captions.embeddings[m.captions.mismatched(images, g)])
        return (own - other).mean().item()

    untrained = build_model("dfgan", model.config)
    untrained.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith("text_encoder")}, strict=False)
    untrained.prepare(digits16, "cpu", resumed=True)
    print(f"D(x, own) - D(x, mismatched): trained {matched_minus_mismatched(model):.3f}, "
          f"untrained {matched_minus_mismatched(untrained):.3f}")
    assert matched_minus_mismatched(model) > 0.15 and abs(matched_minus_mismatched(untrained)) < 0.05

import pytest
import torch

from ganforge.models import build_model, parameter_count


@pytest.mark.parametrize("resolution", [8, 16, 32, 64])
@pytest.mark.parametrize("num_classes,channels", [(0, 3), (10, 1), (3, 3)])
def test_cdcgan_shapes(resolution, num_classes, channels):
    model = build_model("cdcgan", dict(resolution=resolution, channels=channels, num_classes=num_classes,
                                       base_channels=8))
    z = torch.randn(5, model.z_dim)
    y = torch.randint(0, num_classes, (5,)) if num_classes else None
    images = model.G(z, y)
    assert images.shape == (5, channels, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1  # tanh output
    assert model.D(images, y).shape == (5,)


def test_label_changes_output_only_when_conditional():
    model = build_model("cdcgan", dict(resolution=16, channels=1, num_classes=10, base_channels=8)).eval()
    z = torch.randn(2, model.z_dim)
    a = model.G(z, torch.tensor([0, 0]))
    b = model.G(z, torch.tensor([7, 7]))
    assert not torch.allclose(a, b)
    assert not torch.allclose(model.D(a, torch.tensor([0, 0])), model.D(a, torch.tensor([7, 7])))


def test_dcgan_ignores_labels_and_has_no_label_parameters():
    cond = build_model("cdcgan", dict(resolution=32, channels=3, num_classes=10, base_channels=16))
    plain = build_model("dcgan", dict(resolution=32, channels=3, num_classes=10, base_channels=16))
    assert plain.num_classes == 0
    # the conditional model has exactly the label embedding (10 x 50), the wider first layer and the label map extra
    # (widths: 16 * 32 / 4 = 128 channels at 4x4 in G; 16 * 32 / 16 = 32 in D's first conv)
    extra_g = 10 * 50 + 50 * 128 * 4 * 4
    extra_d = 10 * 32 * 32 + 1 * 32 * 4 * 4
    assert parameter_count(cond.G) - parameter_count(plain.G) == extra_g
    assert parameter_count(cond.D) - parameter_count(plain.D) == extra_d


@pytest.mark.parametrize("resolution", [4, 24, 100])
def test_resolution_must_be_power_of_two_at_least_8(resolution):
    with pytest.raises(ValueError, match="--resolution"):
        build_model("cdcgan", dict(resolution=resolution, channels=1, num_classes=10))


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="--model nope"):
        build_model("nope", {})

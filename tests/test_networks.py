"""Networks built from the spec: every DCGAN image size, and the original's perceptron."""

import pytest
import torch
from lipizzaner_cell.algorithm.networks import build_discriminator, build_generator
from lipizzaner_core.spec.training import NetworkPartSpec


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 128, 128)])
def test_dcgan_networks_fit_every_supported_image_size(shape):
    part = NetworkPartSpec(architecture="dcgan", width=8)
    generator, discriminator = build_generator(part, 16, shape), build_discriminator(part, shape)
    images = generator(torch.randn(4, 16))
    assert images.shape == (4, *shape)
    assert discriminator(images).shape == (4,)


def test_mlp_networks_are_the_original_perceptron_by_default():
    generator = build_generator(NetworkPartSpec(), 64, (1, 28, 28))
    assert [m.out_features for m in generator.modules() if hasattr(m, "out_features")] == [
        256,
        256,
        784,
    ]
    assert build_discriminator(NetworkPartSpec(), (2,))(torch.randn(5, 2)).shape == (5,)

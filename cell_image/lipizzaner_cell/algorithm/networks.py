"""Generator and discriminator networks, built from the run spec and the data's shape.

Discriminators return one logit per sample; every loss works on logits. A semi-supervised
run's discriminator (`ClassifyingDiscriminator`) also classifies, and its logit is the
one its K + 1 outputs imply. Discriminators
have no batch normalisation, so a sample's score never depends on the rest of its batch
(fitness evaluation scores many generators' samples in one forward pass).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from lipizzaner_core.spec.training import NetworkPartSpec
from torch import nn

Shape = tuple[int, ...]


class MLPGenerator(nn.Module):
    """The original Lipizzaner's perceptron: Linear + LeakyReLU(0.2) blocks, tanh out.

    A per-coordinate tanh pulls 2-D samples toward the axes (on the 8-Gaussian ring the
    axis modes win); `linear=True` drops it.
    """

    def __init__(
        self, latent_size: int, hidden_sizes: list[int], shape: Shape, linear: bool = False
    ) -> None:
        super().__init__()
        self.shape = shape
        sizes = [latent_size, *hidden_sizes]
        layers: list[nn.Module] = []
        for size_in, size_out in itertools.pairwise(sizes):
            layers += [nn.Linear(size_in, size_out), nn.LeakyReLU(0.2)]
        layers += [nn.Linear(sizes[-1], math.prod(shape)), nn.Identity() if linear else nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, hidden_sizes: list[int], shape: Shape, outputs: int = 1) -> None:
        super().__init__()
        sizes = [math.prod(shape), *hidden_sizes]
        layers: list[nn.Module] = []
        for size_in, size_out in itertools.pairwise(sizes):
            layers += [nn.Linear(size_in, size_out), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(sizes[-1], outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations (feature matching's)."""
        return self.net[:-1](x.flatten(1))


def _upsampling_plan(image_size: int) -> tuple[int, int]:
    """(side of the first feature map, number of x2 upsamplings) for 28, 32, 64 or 128
    pixels."""
    base = 7 if image_size == 28 else 4
    steps = int(math.log2(image_size // base))
    if base * 2**steps != image_size:
        raise ValueError(f"dcgan supports 28, 32, 64 or 128 pixel images, got {image_size}")
    return base, steps


class DCGANGenerator(nn.Module):
    def __init__(self, latent_size: int, width: int, shape: Shape) -> None:
        super().__init__()
        channels, image_size = shape[0], shape[1]
        base, steps = _upsampling_plan(image_size)
        widths = [width * 2 ** (steps - 1 - i) for i in range(steps)]
        self.base, self.first = base, widths[0]
        self.project = nn.Sequential(
            nn.Linear(latent_size, widths[0] * base * base),
            nn.BatchNorm1d(widths[0] * base * base),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        for w_in, w_out in itertools.pairwise(widths):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1), nn.BatchNorm2d(w_out), nn.ReLU()]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z).view(-1, self.first, self.base, self.base))


class DCGANDiscriminator(nn.Module):
    def __init__(self, width: int, shape: Shape, outputs: int = 1) -> None:
        super().__init__()
        channels, image_size = shape[0], shape[1]
        base, steps = _upsampling_plan(image_size)
        widths = [channels] + [width * 2**i for i in range(steps)]
        layers: list[nn.Module] = []
        for w_in, w_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(
            *layers, nn.Flatten(), nn.Linear(widths[-1] * base * base, outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolution's activations, flattened (feature matching's)."""
        return self.net[:-1](x)


RECURRENT = {"lstm": nn.LSTM, "gru": nn.GRU}


def _recurrent_stack(cell: str, size_in: int, hidden_sizes: list[int]) -> nn.ModuleList:
    """Recurrent layers of the given sizes, one after another (batch first)."""
    sizes = [size_in, *hidden_sizes]
    layer = RECURRENT[cell]
    return nn.ModuleList(layer(a, b, batch_first=True) for a, b in itertools.pairwise(sizes))


def _run_stack(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x, _ = layer(x)
    return x


class RNNGenerator(nn.Module):
    """Sequences of T steps and C channels: the latent vector, with the step's position
    (its sine and cosine over the sequence), in at every step; tanh out, or none with
    `linear` (a tanh saturates into square waves)."""

    clock: torch.Tensor  # (T, 2): each step's sine and cosine over the sequence

    def __init__(
        self,
        latent_size: int,
        hidden_sizes: list[int],
        cell: str,
        shape: Shape,
        linear: bool = False,
    ) -> None:
        super().__init__()
        self.squash = nn.Identity() if linear else nn.Tanh()
        self.shape = shape
        steps = shape[0]
        angle = 2 * math.pi * torch.arange(steps, dtype=torch.float32) / steps
        self.register_buffer("clock", torch.stack([angle.sin(), angle.cos()], 1), persistent=False)
        self.layers = _recurrent_stack(cell, latent_size + 2, hidden_sizes)
        self.out = nn.Linear(hidden_sizes[-1], shape[1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        steps = self.shape[0]
        clock = self.clock.expand(z.shape[0], steps, 2)
        x = torch.cat([z.unsqueeze(1).expand(-1, steps, -1), clock], 2)
        return self.squash(self.out(_run_stack(self.layers, x)))


class RNNDiscriminator(nn.Module):
    """A sequence's logit from the recurrent layers' outputs, averaged over its steps."""

    def __init__(self, hidden_sizes: list[int], cell: str, shape: Shape, outputs: int = 1) -> None:
        super().__init__()
        self.layers = _recurrent_stack(cell, shape[1], hidden_sizes)
        self.out = nn.Linear(hidden_sizes[-1], outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x)).squeeze(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last recurrent layer's states, averaged over time (feature matching's)."""
        return _run_stack(self.layers, x).mean(1)


def build_generator(part: NetworkPartSpec, latent_size: int, shape: Shape) -> nn.Module:
    if part.architecture == "dcgan":
        return DCGANGenerator(latent_size, part.width, shape)
    if part.architecture == "rnn":
        linear = part.output == "linear"
        return RNNGenerator(latent_size, list(part.hidden_sizes), part.cell, shape, linear)
    return MLPGenerator(latent_size, list(part.hidden_sizes), shape, linear=part.output == "linear")


DiscriminatorBody = MLPDiscriminator | DCGANDiscriminator | RNNDiscriminator


class ClassifyingDiscriminator(nn.Module):
    """The SGAN discriminator (Salimans et al.; the original's `ssgan_*` networks): K class
    logits and a fake one. Its GAN logit is log(1 - p_fake) - log p_fake, so sigmoid of it
    is the probability of "real, of any class", and every loss applies unchanged: BCE on
    it is the original's real and fake terms, the generator's the original's too."""

    def __init__(self, body: DiscriminatorBody, classes: int) -> None:
        super().__init__()
        self.body: DiscriminatorBody = body  # K + 1 outputs: the classes, then fake
        self.classes = classes

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The K class logits."""
        return self.body(x)[:, : self.classes]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The body's last hidden activations: what feature matching compares."""
        return self.body.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.body(x)
        return torch.logsumexp(logits[:, : self.classes], 1) - logits[:, self.classes]


def build_discriminator(
    part: NetworkPartSpec, shape: Shape, classes: int | None = None
) -> nn.Module:
    """The discriminator of `part`; with `classes`, one that also classifies."""
    outputs = 1 if classes is None else classes + 1
    body: DiscriminatorBody
    if part.architecture == "dcgan":
        body = DCGANDiscriminator(part.width, shape, outputs)
    elif part.architecture == "rnn":
        body = RNNDiscriminator(list(part.hidden_sizes), part.cell, shape, outputs)
    else:
        body = MLPDiscriminator(list(part.hidden_sizes), shape, outputs)
    return body if classes is None else ClassifyingDiscriminator(body, classes)


@contextmanager
def evaluation_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Batch norm on its running statistics while sampling; the previous mode after."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)

import math

import pytest
import torch
from lipizzaner_cell.algorithm.losses import (
    LOSSES,
    StepLosses,
    draw_loss,
    fitness_loss,
    gradient_penalty,
    spec_loss,
)
from torch import nn

REAL = torch.tensor([2.0, -1.0, 0.5])
FAKE = torch.tensor([-3.0, 0.0, 1.0])


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


@pytest.mark.parametrize(
    ("name", "generator", "discriminator"),
    [
        (
            # The original's bceloss: BCE against "real" labels, the non-saturating -log D.
            "bce",
            mean(-math.log(sig(f)) for f in FAKE.tolist()),
            mean(-math.log(sig(r)) for r in REAL.tolist())
            + mean(-math.log(1 - sig(f)) for f in FAKE.tolist()),
        ),
        (
            # The original's HeuristicLoss: -0.5 mean(log D(G(z))).
            "heuristic",
            -0.5 * mean(math.log(sig(f)) for f in FAKE.tolist()),
            mean(-math.log(sig(r)) for r in REAL.tolist())
            + mean(-math.log(1 - sig(f)) for f in FAKE.tolist()),
        ),
        (
            # Goodfellow's saturating minimax form: log(1 - D(G(z))).
            "minimax",
            mean(math.log(1 - sig(f)) for f in FAKE.tolist()),
            mean(-math.log(sig(r)) for r in REAL.tolist())
            + mean(-math.log(1 - sig(f)) for f in FAKE.tolist()),
        ),
        (
            "mse",
            mean((sig(f) - 1) ** 2 for f in FAKE.tolist()),
            mean((sig(r) - 1) ** 2 for r in REAL.tolist())
            + mean(sig(f) ** 2 for f in FAKE.tolist()),
        ),
        ("wgan", -mean(FAKE.tolist()), mean(FAKE.tolist()) - mean(REAL.tolist())),
        ("wgan-gp", -mean(FAKE.tolist()), mean(FAKE.tolist()) - mean(REAL.tolist())),
        (
            # The original's WGAN on its sigmoid D: the critic pushes D(x) down, D(G(z)) up.
            "wgan-original",
            mean(sig(f) for f in FAKE.tolist()),
            mean(sig(r) for r in REAL.tolist()) - mean(sig(f) for f in FAKE.tolist()),
        ),
    ],
)
def test_losses_match_their_closed_forms(name, generator, discriminator):
    loss = LOSSES[name]
    assert float(loss.generator(FAKE)) == pytest.approx(generator, rel=1e-6)
    assert float(loss.discriminator(REAL, FAKE)) == pytest.approx(discriminator, rel=1e-6)


def test_each_loss_trains_as_the_original_does():
    """(gradient penalty, weight clip, critic steps per generator step, optimizer, blocks)."""
    assert {
        name: (
            loss.gradient_penalty,
            loss.clip,
            loss.critic_steps,
            loss.optimizer,
            loss.critic_blocks,
        )
        for name, loss in LOSSES.items()
    } == {
        "bce": (0.0, 0.0, 1, "adam", False),
        "heuristic": (0.0, 0.0, 1, "adam", False),
        "minimax": (0.0, 0.0, 1, "adam", False),
        "mse": (0.0, 0.0, 1, "adam", False),
        "wgan": (0.0, 0.01, 5, "rmsprop", False),
        "wgan-gp": (10.0, 0.0, 1, "adam", False),
        "wgan-original": (0.0, 0.01, 5, "rmsprop", True),
    }
    assert [fitness_loss(n).name for n in ("mustangs", "wgan-original", "wgan")] == [
        "bce",
        "bce",
        "wgan",
    ]


def test_gradient_penalty_is_zero_for_a_unit_slope_critic():
    critic = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[0.6, 0.8]]))  # gradient norm exactly 1
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    rng = torch.Generator().manual_seed(0)
    assert float(gradient_penalty(lambda x: critic(x).squeeze(1), real, fake, rng).detach()) == (
        pytest.approx(0.0, abs=1e-10)
    )
    with torch.no_grad():
        critic.weight.mul_(3)  # norm 3: penalty (3 - 1)^2 = 4
    assert float(gradient_penalty(lambda x: critic(x).squeeze(1), real, fake, rng).detach()) == (
        pytest.approx(4.0, rel=1e-5)
    )


def test_mustangs_draws_each_of_its_losses_and_each_individual_draws_alone():
    rng = torch.Generator().manual_seed(0)
    drawn = [draw_loss("mustangs", rng).name for _ in range(300)]
    assert set(drawn) == {"bce", "mse", "heuristic"}
    assert all(draw_loss("heuristic", rng).name == "heuristic" for _ in range(5))
    assert spec_loss("mustangs").name == "bce"


def test_mustangs_at_creation_is_one_draw_per_cell_that_a_resume_draws_again():
    """`mustangs.draw: at-creation`: a cell's steps all use the loss drawn from its seed;
    the draw takes nothing from the decisions' generator, and every loss is drawn by some
    seed."""
    rng = torch.Generator().manual_seed(0)
    before = rng.get_state()
    losses = StepLosses.of("mustangs", "at-creation", seed=7)
    assert len({losses.draw(rng).name for _ in range(20)}) == 1
    assert torch.equal(rng.get_state(), before)
    assert StepLosses.of("mustangs", "at-creation", seed=7) == losses
    assert losses.trained_with == losses.draw(rng).name
    drawn = {StepLosses.of("mustangs", "at-creation", seed).trained_with for seed in range(30)}
    assert drawn == {"bce", "mse", "heuristic"}
    per_batch = StepLosses.of("mustangs", "per-batch", seed=7)
    assert per_batch.trained_with == "mustangs"
    assert len({per_batch.draw(rng).name for _ in range(60)}) == 3
    assert StepLosses.of("mse", "per-batch", seed=7).draw(rng).name == "mse"

"""How a run's cells train: networks, loss, co-evolution, semi-supervision, batches and
checkpoints (a section of the `LipizzanerRun` spec, `run.py`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from lipizzaner_core.spec.base import SpecModel
from lipizzaner_core.spec.datasets import IMAGE_DATASETS, SEQUENCE_DATASETS


class NetworkPartSpec(SpecModel):
    architecture: Literal["mlp", "dcgan", "rnn"] = "mlp"
    hidden_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [256, 256],
        min_length=1,
        description="mlp: the hidden layers' widths; rnn: the stacked recurrent layers' sizes",
    )
    cell: Literal["lstm", "gru"] = Field("lstm", description="rnn: the recurrent layer")
    width: int = Field(64, ge=1, description="dcgan: channels of the widest conv layer")
    output: Literal["tanh", "linear"] = Field(
        "tanh", description="generator output layer; linear suits low-dimensional data"
    )


# The data an architecture needs: (what kind, which datasets); mlp takes any.
ARCHITECTURE_DATA: dict[str, tuple[str, tuple[str, ...]]] = {
    "dcgan": ("an image dataset", IMAGE_DATASETS),
    "rnn": ("a sequence dataset", SEQUENCE_DATASETS),
}


# Measured on MNIST at this project's budgets (docs/algorithm.md, "The default learning
# rate"): perceptrons learn fastest at 1e-3, in a grid and alone; 2e-4 is DCGAN's own.
# Recurrent networks take the perceptrons' rate (the sequences example trains at it; not swept).
DEFAULT_LEARNING_RATES = {"mlp": 1e-3, "dcgan": 2e-4, "rnn": 1e-3}


class NetworkSpec(SpecModel):
    latent_size: int = Field(64, ge=1)
    generator: NetworkPartSpec = Field(default_factory=NetworkPartSpec)
    discriminator: NetworkPartSpec = Field(default_factory=NetworkPartSpec)


# The original's names and meanings (the cell's algorithm/losses.py); minimax and wgan-gp are
# ours; wgan-original is the original's WGAN trainer as it ran.
LossName = Literal[
    "bce", "heuristic", "minimax", "mse", "wgan", "wgan-gp", "wgan-original", "mustangs"
]


class MustangsSpec(SpecModel):
    """How `loss: mustangs` picks each player's loss (docs/algorithm.md, "Losses")."""

    draw: Literal["per-batch", "at-creation"] = Field(
        "per-batch",
        description="per-batch: every player draws one of bce, mse and heuristic on every "
        "batch; at-creation: the cell draws one when it is created and trains with it all "
        "run (the original's default, randomized: False)",
    )


class FitnessSpec(SpecModel):
    sample_size: int = Field(500, ge=1)
    mode: Literal["worst", "best", "average"] = "average"


class MutationSpec(SpecModel):
    probability: float = Field(0.5, ge=0.0, le=1.0)
    alpha: float = Field(1e-4, ge=0.0)
    rule: Literal["original", "unbiased"] = Field(
        "original",
        description="original: lr += alpha * N(-lr0/10, lr0), the original's formula, whose "
        "negative mean lets the rate drift down over a long run (docs/algorithm.md); "
        "unbiased: lr *= exp(alpha * N(0, 1)), zero-mean in log space, with the same "
        "relative spread at lr0",
    )


class CoevolutionSpec(SpecModel):
    population_size: int = Field(1, ge=1)
    tournament_size: int = Field(2, ge=1)
    replacements: int = Field(1, ge=0)
    replacement_rule: Literal["faithful", "offspring"] = "faithful"
    selection: bool = True
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="Both players' initial rate (default: 1e-3 for a perceptron, 2e-4 for a "
        "DCGAN, each player by its own network)",
    )
    generator_learning_rate: float | None = Field(
        None, gt=0, description="The generators' initial rate (default: learningRate)"
    )
    discriminator_learning_rate: float | None = Field(
        None, gt=0, description="The discriminators' initial rate (default: learningRate)"
    )
    mutation: MutationSpec = Field(default_factory=MutationSpec)
    fitness: FitnessSpec = Field(default_factory=FitnessSpec)
    discriminator_skip_every_nth: int = Field(
        0,
        ge=0,
        description="The original's discriminator_skip_each_nth_step: the discriminator "
        "trains on batches where batch % (n + 1) == 0 (0: every batch, 1: every other)",
    )

    @model_validator(mode="after")
    def _replacements_fit_population(self) -> CoevolutionSpec:
        if self.replacements > self.population_size:
            raise ValueError(
                f"replacements: must be <= populationSize ({self.population_size}), "
                f"got {self.replacements}"
            )
        return self


class SemiSupervisedSpec(SpecModel):
    """Semi-supervised training (SGAN): discriminators also classify (docs/semi-supervised.md)."""

    enabled: bool = Field(
        False,
        description="true: each discriminator outputs the dataset's classes plus fake, trains "
        "on the labelled samples' cross-entropy too, and its fitness counts both",
    )
    weights: Literal["fixed", "spread"] = Field(
        "fixed",
        description="fixed: every cell weighs its losses by unsupervisedWeight and "
        "supervisedWeight; spread: as the original, cell i of n by i/(n-1) and 1-i/(n-1)",
    )
    unsupervised_weight: float = Field(
        1.0, ge=0.0, description="fixed: the weight of the discriminator's GAN loss"
    )
    supervised_weight: float = Field(
        1.0, ge=0.0, description="fixed: the weight of its classification loss"
    )
    labelled_batch_size: int = Field(
        100, ge=1, description="labelled samples in each discriminator step, drawn anew"
    )
    generator_loss: Literal["gan", "feature-matching"] = Field(
        "gan",
        description="gan: the generators train on the run's loss; feature-matching: on the "
        "squared distance between the mean discriminator features of real and generated "
        "batches (Salimans et al., the original's SSGAN on CIFAR and SVHN)",
    )
    labels: Literal["per-cell", "shared"] = Field(
        "per-cell",
        description="per-cell: each cell draws its labelled samples (dataset.labelRate of "
        "its own) from its own seed, so a grid holds up to cells x as many distinct labels; "
        "shared: one labelled subset of the training split, drawn from the run's seed, for "
        "every cell",
    )

    def weights_of(self, cell: int, cells: int) -> tuple[float, float]:
        """(unsupervised, supervised) weights of a cell's discriminator losses."""
        if self.weights == "fixed":
            return self.unsupervised_weight, self.supervised_weight
        unsupervised = 0.5 if cells == 1 else cell / (cells - 1)
        return unsupervised, 1.0 - unsupervised


class GeneratorEmaSpec(SpecModel):
    """An exponential moving average of each generator's weights (docs/algorithm.md)."""

    decay: float = Field(
        0.99,
        ge=0.0,
        lt=1.0,
        description="after each generator step: ema = decay * ema + (1 - decay) * weights; "
        "0: no average, the generators themselves (the original's way)",
    )

    @property
    def on(self) -> bool:
        return self.decay > 0.0


class StackingSpec(SpecModel):
    """Cells of one process trained as one batched program (docs/exchange.md, "Stacked
    cells")."""

    cells: int = Field(
        1,
        ge=1,
        le=64,
        description="how many cells of a process train step 4 as one stacked program (their "
        "players' weights and Adam moments stacked, one vmapped step for all); each cell "
        "keeps its own decisions, data, exchange, metrics and checkpoints. cell.cellsPerPod "
        "must be a multiple of it. 1: every cell steps on its own",
    )


class TrainingSpec(SpecModel):
    batch_size: int = Field(100, ge=1)
    batches_per_generation: int = Field(0, ge=0, description="0 = one pass over the cell's data")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    generator_ema: GeneratorEmaSpec = Field(
        default_factory=GeneratorEmaSpec,
        description="An EMA of every generator's weights (decay 0.99; decay 0: none): the "
        "mixture, its samples and scores, keep-best and the ensemble use the EMA copies, "
        "and the exchange and the checkpoints carry them; training and fitness use the "
        "generators themselves",
    )
    stacking: StackingSpec = Field(default_factory=StackingSpec)
    cuda_graphs: bool = Field(
        True,
        description="On CUDA, replay each training step as a captured CUDA graph (the same "
        "numbers, several times faster for small networks); false: plain PyTorch steps",
    )


class CheckpointSpec(SpecModel):
    every: int = Field(5, ge=1, description="Checkpoint every N generations")
    keep: int = Field(2, ge=1, description="How many checkpoints each cell keeps")

"""One cell's co-evolution engine: the Lipizzaner generation loop, seven steps per generation.

The engine does no I/O: neighbours come through a `NeighbourhoodProvider`, checkpoints
and results are written by whoever drives it (the in-process runner, a cell process).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable

import torch
from lipizzaner_core.spec import LipizzanerRun
from lipizzaner_core.storage import Storage
from lipizzaner_core.topology import cell_seed

from lipizzaner_cell.algorithm.cell_mixture import CellMixture, frozen_copy
from lipizzaner_cell.algorithm.devices import resolve_device
from lipizzaner_cell.algorithm.fitness import LabelAware, evaluate_fitness, generator_fakes
from lipizzaner_cell.algorithm.graphed_steps import GraphedSteps, graphable
from lipizzaner_cell.algorithm.individual import Individual, origins
from lipizzaner_cell.algorithm.losses import Loss, StepLosses, fitness_loss, spec_loss
from lipizzaner_cell.algorithm.mixture import KeptMixture
from lipizzaner_cell.algorithm.neighbourhood import (
    CentreState,
    Neighbourhood,
    NeighbourhoodProvider,
    NeighbourImports,
)
from lipizzaner_cell.algorithm.networks import build_discriminator, build_generator
from lipizzaner_cell.algorithm.report import GenerationReport, timed_phase
from lipizzaner_cell.algorithm.selection import best, replace, tournament_select
from lipizzaner_cell.algorithm.semi_supervised import (
    SemiSupervision,
    discriminator_classes,
    label_source,
)
from lipizzaner_cell.algorithm.stacked_steps import StackJob
from lipizzaner_cell.algorithm.stacking import TrainingStack
from lipizzaner_cell.algorithm.state import State
from lipizzaner_cell.algorithm.training import BatchTrainer, EagerSteps, Players
from lipizzaner_cell.data.datasets import Dataset
from lipizzaner_cell.scores.choice import build_scorer
from lipizzaner_cell.scores.references import ReferenceCache
from lipizzaner_cell.scores.scorers import Scorer

log = logging.getLogger(__name__)


class CellEngine:
    def __init__(
        self,
        run: LipizzanerRun,
        index: int,
        provider: NeighbourhoodProvider,
        dataset: Dataset,
        device: torch.device | None = None,
        storage: Storage | None = None,
        references: ReferenceCache | None = None,
        stack: TrainingStack | None = None,
    ) -> None:
        """`storage` reads the score's weight files (the run's: its S3 endpoint too);
        `references` caches the real data's embeddings for the whole run; `stack`: where
        this cell's step 4 runs with its stacked siblings' (`training.stacking`)."""
        spec = run.spec
        self.spec = spec
        self.index = index
        self.provider = provider
        self.stack = stack
        self.device = device or resolve_device(spec.training.device)
        self.grid = spec.grid.topology()
        self.neighbour_cells = [n.index for n in self.grid.neighbours(index)]
        # A 1x1 grid of one individual is a plain GAN: its offspring always replaces its
        # parent, as a GAN's step does (under the faithful rule it would never move).
        self.lone = not self.neighbour_cells and spec.coevolution.population_size == 1
        self.seed = cell_seed(spec.seed, index)
        # Decisions (opponents, mutations, tournaments) draw from a CPU generator; noise
        # and batch order from one on the training device, so nothing waits on a copy.
        self.rng = torch.Generator().manual_seed(self.seed)
        self.device_rng = torch.Generator(self.device).manual_seed(
            int(torch.randint(2**62, (1,), generator=self.rng))
        )
        self.training_set, self.validation_set = dataset.split(spec.dataset.validation_fraction)
        diet = self.training_set.subset(spec.dataset.sampling_ratio, self.seed)
        self.data = diet.data.to(self.device)
        self.shape = dataset.shape
        scored = self.validation_set or self.training_set
        labelled, label_seed = label_source(spec, diet, self.training_set, self.seed)
        self.semi = SemiSupervision.of(spec, index, labelled, scored, label_seed, self.device)
        self.classes = discriminator_classes(spec, dataset)
        # Decisions score against held-out data (the training data when none is held out).
        held_out = self.validation_set is not None
        self.scored_on = "validation" if held_out else "training"
        self.scorer: Scorer | None = build_scorer(
            spec.mixture.score_type,
            self.validation_set or self.training_set,
            self.device,
            spec.score,
            storage,
            references=references,
        )
        self.references = references
        # The schedule and the optimizer follow the run's loss; fitness is measured with
        # it too, or, as the original compared mustangs' and its WGAN's individuals, BCE.
        self.loss: Loss = spec_loss(spec.loss)
        self.fitness_loss: Loss = fitness_loss(spec.loss)
        self.step_losses = StepLosses.of(spec.loss, spec.mustangs.draw, self.seed)
        if spec.loss == "mustangs" and self.step_losses.fixed is not None:
            log.info("cell %d: mustangs drew %s at creation", index, self.step_losses.trained_with)
        self.generation = 0
        self.last_batches = 0
        # Replacement's running totals: the acceptance rate is accepted / offered.
        self.offspring_accepted = self.offspring_offered = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.generators = [self._new("generator") for _ in range(self._population)]
            self.discriminators = [self._new("discriminator") for _ in range(self._population)]
        self.mixture = CellMixture(spec.mixture, [index, *self.neighbour_cells])
        self.imports = NeighbourImports(
            self._build, self.loss.optimizer, ema=spec.training.generator_ema.on
        )
        self.trainer = BatchTrainer(
            spec,
            self.loss,
            self.step_losses,
            self.data,
            self._batches,
            self.rng,
            self.device_rng,
            self.noise,
            self._graphed_steps() or EagerSteps(self.device_rng, self.semi),
        )

    def _graphed_steps(self) -> GraphedSteps | None:
        """Captured CUDA graphs for step 4 where they apply (`graphed_steps.py`), else None."""
        spec = self.spec
        if self.device.type != "cuda" or not spec.training.cuda_graphs:
            return None
        if self.semi is not None:
            log.info("cell %d: semi-supervised steps run without CUDA graphs", self.index)
            return None
        if not graphable(self.loss):
            log.info("cell %d: %s steps run without CUDA graphs", self.index, spec.loss)
            return None
        if "rnn" in (spec.network.generator.architecture, spec.network.discriminator.architecture):
            log.info("cell %d: recurrent networks' steps run without CUDA graphs", self.index)
            return None
        return GraphedSteps(self.device)

    # ----------------------------------------------------------------- the generation loop
    def step(self, should_stop: Callable[[], bool] | None = None) -> GenerationReport:
        """Run one generation and publish the new centre.

        If `should_stop()` turns true during training, the batch in hand finishes and the
        generation ends early (selection, replacement and mixture still run), so the state
        stays consistent for a checkpoint.
        """
        co = self.spec.coevolution
        seconds: dict[str, float] = {}
        with timed_phase(seconds, "neighbourhood"):
            hood = self.snapshot_neighbourhood()  # 1
        with timed_phase(seconds, "fitness"):
            real, noise = self._fitness_samples()  # 2
            labelled = self._labelled_samples()
            hood_fakes = generator_fakes(hood.generators, noise)
            evaluate_fitness(
                hood.generators,
                hood.discriminators,
                real,
                hood_fakes,
                self.fitness_loss,
                co.fitness.mode,
                label_aware=self._label_aware(hood.discriminators, labelled),
            )
        with timed_phase(seconds, "selection"):
            players = self.select(hood)  # 3
        with timed_phase(seconds, "training"):
            losses = self.train(players, should_stop)  # 4
        with timed_phase(seconds, "replacement"):
            accepted = self.replace(hood, hood_fakes, players, real, noise, labelled)  # 5
            offered = 2 * co.replacements if co.selection else 0
            self.offspring_accepted += accepted
            self.offspring_offered += offered
        with timed_phase(seconds, "mixture"):
            score = self.evolve_mixture(hood, self.spec.mixture.es_steps_per_generation)  # 6
            self.keep_if_best(hood, score)
        with timed_phase(seconds, "publish"):
            self.generation += 1
            self.publish_centre()  # 7
        centre_g, centre_d = best(self.generators), best(self.discriminators)
        return GenerationReport(
            generation=self.generation,
            generator_loss=losses[0],
            discriminator_loss=losses[1],
            generator_fitness=centre_g.fitness,
            discriminator_fitness=centre_d.fitness,
            generator_lr=centre_g.learning_rate,
            discriminator_lr=centre_d.learning_rate,
            mixture_score=score,
            offspring_offered=offered,
            offspring_accepted=accepted,
            neighbours_present=len(hood.neighbour_cells),
            neighbour_lag=statistics.mean(hood.lags) if hood.lags else None,
            samples_trained=self.last_batches * self.spec.training.batch_size,
            seconds=seconds,
            kept_score=self.mixture.kept.score if self.mixture.kept else None,
            kept_generation=self.mixture.kept.generation if self.mixture.kept else None,
            accuracy=None if self.semi is None else self.semi.accuracy([centre_d.net]),
            mixture_entropy=self.mixture.entropy(),
            generator_origins=origins(self.generators),
            discriminator_origins=origins(self.discriminators),
        )

    def snapshot_neighbourhood(self) -> Neighbourhood:
        """Step 1: the local sub-populations plus each neighbour's newest centre."""
        with self.provider.neighbour_states(self.generation) as states:  # copied
            cells = [cell for cell in self.neighbour_cells if cell in states]
            return Neighbourhood(
                generators=self.generators
                + [self.imports.individual(states[c], "generator") for c in cells],
                discriminators=self.discriminators
                + [self.imports.individual(states[c], "discriminator") for c in cells],
                neighbour_cells=cells,
                lags=[self.generation - states[c].generation for c in cells],
            )

    def select(self, hood: Neighbourhood) -> Players:
        """Step 3: tournament selection from the whole neighbourhood, or, with selection
        off, the local individuals themselves."""
        co = self.spec.coevolution
        if not co.selection:
            return Players(
                self.generators, self.discriminators, hood.discriminators, hood.generators
            )
        selected = []
        for pool, local in (
            (hood.generators, self.generators),
            (hood.discriminators, self.discriminators),
        ):
            size = min(co.tournament_size, len(pool))
            if size < co.tournament_size and self.neighbour_cells:
                # Validation sizes the tournament for the full pool; missing neighbours
                # shrink it, and that is said, never done silently. (A lone cell's pool is
                # its population: validation lets its tournaments shrink to it.)
                log.warning(
                    "cell %d: %d of %d neighbours missing; tournaments of %d from a pool of %d",
                    self.index,
                    len(self.neighbour_cells) - len(hood.neighbour_cells),
                    len(self.neighbour_cells),
                    len(pool),
                    len(pool),
                )
            winners = tournament_select(pool, co.population_size, size, self.rng)
            for slot, winner in enumerate(winners):
                if not winner.optimizer.state:  # a neighbour's, sent without moments
                    winner.adopt_moments(local[slot])
            selected.append(winners)
        generators, discriminators = selected
        return Players(generators, discriminators, discriminators, generators)

    def train(
        self, players: Players, should_stop: Callable[[], bool] | None = None
    ) -> tuple[float, float]:
        """Step 4 (`training.py`; stacked: `stacking.py`): the mean generator and
        discriminator training losses."""
        if self.stack is None:
            g_loss, d_loss, self.last_batches = self.trainer.run(players, should_stop)
        else:
            job = StackJob(self.trainer, players, should_stop)
            g_loss, d_loss, self.last_batches = self.stack.train(self.index, job)
        return g_loss, d_loss

    def replace(
        self,
        hood: Neighbourhood,
        hood_fakes: list[torch.Tensor],
        players: Players,
        real: torch.Tensor,
        noise: torch.Tensor,
        labelled: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> int:
        """Step 5: score the trained individuals against the neighbourhood and, with
        selection, put the better offspring in place of the worst locals.

        Uses step 2's samples (`labelled`: semi-supervised runs' labelled ones). With
        selection `hood_fakes` are still valid (training worked on clones); without, the
        local generators trained in place and make fresh fakes, and nothing is replaced.
        """
        co = self.spec.coevolution
        mode, loss = co.fitness.mode, self.fitness_loss
        trained_fakes = generator_fakes(players.generators, noise)
        evaluate_fitness(
            players.generators, hood.discriminators, None, trained_fakes, loss, mode, assign=("g",)
        )
        if not co.selection:
            hood_fakes = trained_fakes + hood_fakes[len(self.generators) :]
        evaluate_fitness(
            hood.generators,
            players.discriminators,
            real,
            hood_fakes,
            loss,
            mode,
            assign=("d",),
            label_aware=self._label_aware(players.discriminators, labelled),
        )
        if not co.selection:
            return 0
        rule = "offspring" if self.lone else co.replacement_rule
        return replace(self.generators, players.generators, co.replacements, rule) + replace(
            self.discriminators, players.discriminators, co.replacements, rule
        )

    def evolve_mixture(self, hood: Neighbourhood, steps: int) -> float | None:
        """Step 6: `steps` ES steps on the neighbourhood's mixture (`cell_mixture.py`)."""
        cells, nets = self.centres(hood, "generator")
        return self.mixture.evolve(cells, nets, steps, self.scorer, self.noise, self.rng)

    def keep_if_best(self, hood: Neighbourhood, score: float | None) -> None:
        cells, nets = self.centres(hood, "generator")
        self.mixture.keep_if_best(self.generation + 1, score, cells, nets)

    def generator_from(self, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A generator of this run's architecture holding these weights."""
        with torch.random.fork_rng(devices=[]):
            net = self._build("generator")
        net.load_state_dict(weights)
        return net

    def centres(self, hood: Neighbourhood, role: str) -> tuple[list[int], list[torch.nn.Module]]:
        """The neighbourhood's centre generators (the mixture's members) or discriminators
        (a semi-supervised run's classifiers), and their cells: this cell's first."""
        local = self.generators if role == "generator" else self.discriminators
        cells = [self.index, *hood.neighbour_cells]
        nets = [best(local).sample_net] + [self.imports.net(role, c) for c in hood.neighbour_cells]
        return cells, nets

    def publish_centre(self) -> None:
        self.provider.publish(self.centre_state())

    # ------------------------------------------------------------------------ its state
    def state_dict(self) -> State:
        """Everything a resume needs to continue bit for bit: random generators,
        populations, mixture, counters and the kept mixture; each part says its own."""
        state = State({"rng": self.rng.get_state(), "device_rng": self.device_rng.get_state()})
        state.values = {
            "cell": self.index,
            "generation": self.generation,
            "offspring": [self.offspring_accepted, self.offspring_offered],
            "generator_steps": self.trainer.generator_steps,
            "mixture_weights": {str(cell): w for cell, w in self.mixture.weights.items()},
            "generators": [
                state.nest(f"generators.{i}", g.state_dict()) for i, g in enumerate(self.generators)
            ],
            "discriminators": [
                state.nest(f"discriminators.{i}", d.state_dict())
                for i, d in enumerate(self.discriminators)
            ],
            "kept": self.mixture.kept and state.nest("kept", self.mixture.kept.state_dict()),
        }
        return state

    def load_state_dict(self, state: State) -> None:
        """Continue from `state`; ValueError if it is another cell's or another size's."""
        values = state.values
        if values.get("cell") != self.index:
            raise ValueError(f"the state is cell {values.get('cell')}'s, not cell {self.index}'s")
        for role in ("generators", "discriminators"):
            population: list[Individual] = getattr(self, role)
            if len(values[role]) != len(population):
                raise ValueError(
                    f"the state has {len(values[role])} {role}, the spec asks for {len(population)}"
                )
            for i, individual in enumerate(population):
                individual.load_state_dict(state.child(f"{role}.{i}", values[role][i]))
        self.rng.set_state(state.tensors["rng"])
        self.device_rng.set_state(state.tensors["device_rng"])
        self.mixture.weights = {int(c): w for c, w in values["mixture_weights"].items()}
        self.generation = values["generation"]
        self.offspring_accepted, self.offspring_offered = values["offspring"]
        self.trainer.generator_steps = values.get("generator_steps", 0)  # 0: an older checkpoint
        kept = values.get("kept")  # none yet, or a checkpoint from before keep-best
        self.mixture.kept = kept and KeptMixture.from_state_dict(state.child("kept", kept))

    # ----------------------------------------------------------------------- helpers
    @property
    def _population(self) -> int:
        return self.spec.coevolution.population_size

    @property
    def _batches(self) -> int:
        per_generation = self.spec.training.batches_per_generation
        return per_generation or max(1, len(self.data) // self.spec.training.batch_size)

    def _new(self, role: str) -> Individual:
        rate = self.spec.initial_rate(role)
        individual = Individual.fresh(self._build(role), rate, self.index, self.loss.optimizer)
        individual.origin = (self.index, self.generation)
        if role == "generator" and self.spec.training.generator_ema.on:
            individual.keep_ema()
        return individual

    def _build(self, role: str) -> torch.nn.Module:
        network = self.spec.network
        if role == "generator":
            net = build_generator(network.generator, network.latent_size, self.shape)
        else:
            net = build_discriminator(network.discriminator, self.shape, self.classes)
        return net.to(self.device)

    def noise(self, count: int) -> torch.Tensor:
        latent = self.spec.network.latent_size
        return torch.randn((count, latent), generator=self.device_rng, device=self.device)

    def _fitness_samples(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.spec.coevolution.fitness.sample_size
        rows = torch.randint(len(self.data), (size,), generator=self.device_rng, device=self.device)
        return self.data[rows], self.noise(size)

    def _labelled_samples(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Semi-supervised runs: the generation's labelled samples for fitness."""
        size = self.spec.coevolution.fitness.sample_size
        return None if self.semi is None else self.semi.draw(size, self.device_rng)

    def _label_aware(
        self,
        discriminators: list[Individual],
        labelled: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> LabelAware | None:
        """Semi-supervised runs: the label-aware fitness of `discriminators`."""
        if self.semi is None or labelled is None:
            return None
        return self.semi.label_aware([d.net for d in discriminators], *labelled)

    def centre_state(self) -> CentreState:
        centre_g, centre_d = best(self.generators), best(self.discriminators)
        moments = self.spec.exchange.optimizer_state
        return CentreState(
            cell=self.index,
            generation=self.generation,
            generator=frozen_copy(centre_g.net.state_dict()),
            discriminator=frozen_copy(centre_d.net.state_dict()),
            generator_lr=centre_g.learning_rate,
            discriminator_lr=centre_d.learning_rate,
            generator_fitness=centre_g.fitness,
            discriminator_fitness=centre_d.fitness,
            mixture_weights=dict(self.mixture.weights),
            generator_moments=frozen_copy(centre_g.moments()) if moments else {},
            discriminator_moments=frozen_copy(centre_d.moments()) if moments else {},
            generator_ema={} if centre_g.ema is None else frozen_copy(centre_g.ema.state_dict()),
            generator_origin=centre_g.origin,
            discriminator_origin=centre_d.origin,
        )

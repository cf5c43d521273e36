"""Mutation, selection, replacement, fitness tables and the mixture ES."""

import math
import statistics

import pytest
import torch
from lipizzaner_cell.algorithm.fitness import evaluate_fitness, generator_fakes, loss_tables
from lipizzaner_cell.algorithm.individual import Individual, moment_template, mutate_learning_rate
from lipizzaner_cell.algorithm.losses import LOSSES
from lipizzaner_cell.algorithm.mixture import MixtureEmbeddings, allocate, es_step, sample_mixture
from lipizzaner_cell.algorithm.selection import replace, tournament_select
from lipizzaner_cell.exchange.codec import architecture_of
from torch import nn


def individual(fitness: float = 0.0, lr: float = 1e-3, seed: int = 0) -> Individual:
    torch.manual_seed(seed)
    ind = Individual.fresh(nn.Linear(3, 2), lr, source_cell=0)
    ind.fitness = fitness
    return ind


def test_learning_rate_mutation_reaches_the_live_optimizer():
    ind = individual(lr=2e-4)
    rng = torch.Generator().manual_seed(1)
    assert mutate_learning_rate(ind, probability=1.0, alpha=1.0, base_rate=2e-4, rng=rng)
    assert ind.learning_rate != 2e-4
    assert ind.optimizer.param_groups[0]["lr"] == ind.learning_rate


def test_a_mutated_rate_changes_the_size_of_the_next_adam_step():
    # Adam's first step moves each weight by about lr, so the step size reveals the lr in use.
    steps = []
    for lr in (1e-3, 5e-3):
        ind = individual(lr=1e-3)
        ind.set_learning_rate(lr)
        before = ind.net.weight.detach().clone()
        ind.net(torch.ones(1, 3)).sum().backward()
        ind.optimizer.step()
        steps.append(float((ind.net.weight.detach() - before).abs().max()))
    assert steps[1] == pytest.approx(5 * steps[0], rel=1e-3)


def test_mutation_probability_zero_never_mutates_and_rates_never_go_negative():
    rng = torch.Generator().manual_seed(2)
    ind = individual(lr=1e-6)
    assert not mutate_learning_rate(ind, 0.0, 1.0, 1e-3, rng)
    for _ in range(200):
        mutate_learning_rate(ind, 1.0, 10.0, 1e-3, rng)
        assert ind.learning_rate >= 0.0


def mutation_steps(rule: str, draws: int = 4000) -> list[float]:
    """Single mutations from lr0, each from a fresh rate: the rate's log change in units
    of alpha (at lr0 both rules' relative spread is alpha)."""
    rng = torch.Generator().manual_seed(3)
    ind = individual(lr=1e-3)
    steps = []
    for _ in range(draws):
        ind.set_learning_rate(1e-3)
        mutate_learning_rate(ind, 1.0, 0.05, 1e-3, rng, rule)
        steps.append(math.log(ind.learning_rate / 1e-3) / 0.05)
    return steps


def test_the_original_rule_drifts_down_and_the_unbiased_rule_does_not():
    original, unbiased = mutation_steps("original"), mutation_steps("unbiased")
    # N(-lr0/10, lr0): a mean of -0.1 alpha a step (standard error 0.016 over 4000 draws).
    assert statistics.mean(original) == pytest.approx(-0.1, abs=0.05)
    assert abs(statistics.mean(unbiased)) < 0.05
    assert statistics.stdev(unbiased) == pytest.approx(statistics.stdev(original), rel=0.1)
    ind = individual(lr=1e-3)
    rng = torch.Generator().manual_seed(4)
    for _ in range(200):  # large steps: multiplied, never below zero
        mutate_learning_rate(ind, 1.0, 10.0, 1e-3, rng, "unbiased")
        assert ind.learning_rate > 0.0


def trained(ind: Individual, steps: int = 1) -> Individual:
    for _ in range(steps):
        ind.optimizer.zero_grad()
        ind.net(torch.ones(1, 3)).pow(2).sum().backward()
        ind.optimizer.step()
    return ind


def optimizer_tensors(ind: Individual) -> dict[str, torch.Tensor]:
    return {
        f"{param}.{slot}": value.clone()
        for param, slots in ind.optimizer.state_dict()["state"].items()
        for slot, value in slots.items()
    }


def test_clones_keep_adam_state_and_train_independently():
    parent = trained(individual())
    child = parent.clone()
    assert child.optimizer.state_dict()["state"][0]["step"] == 1
    child.net.weight.data.add_(1.0)
    assert not torch.equal(child.net.weight, parent.net.weight)


def test_training_a_clone_leaves_the_parents_optimizer_state_bit_identical():
    """The original deep-copies the optimizer state; a shared one would let a rejected
    offspring's training move its kept parent's Adam moments."""
    parent = trained(individual(), steps=2)
    before = optimizer_tensors(parent)
    trained(parent.clone(), steps=3)
    after = optimizer_tensors(parent)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "the clone moved them"


def test_an_import_adopts_a_copy_of_the_local_moments_but_keeps_its_own_rate():
    local = trained(individual(lr=1e-3, seed=1))
    imported = individual(lr=7e-4, seed=2)
    imported.adopt_moments(local)
    state = imported.optimizer.state_dict()["state"]
    assert state[0]["step"] == 1
    assert torch.equal(state[0]["exp_avg"], local.optimizer.state_dict()["state"][0]["exp_avg"])
    assert imported.optimizer.param_groups[0]["lr"] == imported.learning_rate == 7e-4
    assert not torch.equal(imported.net.weight, local.net.weight)
    before = optimizer_tensors(local)
    trained(imported, steps=2)
    assert all(torch.equal(v, optimizer_tensors(local)[k]) for k, v in before.items())


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_moments_are_shaped_as_the_template_and_load_into_another_individual(optimizer):
    """The template is what a receiving cell accepts on the wire before any training."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(), nn.Linear(4, 1))
    sender = trained(Individual.fresh(net, 1e-3, 0, optimizer), steps=2)
    moments = sender.moments()
    with torch.device("meta"):
        template = moment_template(
            nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(), nn.Linear(4, 1)), optimizer
        )
    assert architecture_of(moments) == architecture_of(template)
    receiver = Individual.fresh(
        nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(), nn.Linear(4, 1)), 5e-4, 1, optimizer
    )
    arrived = {k: v.clone() for k, v in moments.items()}
    receiver.load_moments(arrived)
    for tensor in arrived.values():  # the buffer they came in is reused for a later state
        tensor.fill_(7.0)
    assert all(torch.equal(receiver.moments()[k], v) for k, v in moments.items())
    assert receiver.optimizer.param_groups[0]["lr"] == 5e-4
    receiver.load_moments({})
    assert not receiver.optimizer.state


def test_a_tournament_larger_than_its_pool_is_an_error_not_a_smaller_tournament():
    pool = [individual(f) for f in (3.0, 0.5)]
    with pytest.raises(ValueError, match="tournament of 3 from a pool of 2"):
        tournament_select(pool, count=1, tournament_size=3, rng=torch.Generator())


def test_tournament_over_the_whole_pool_always_picks_the_fittest():
    pool = [individual(f) for f in (3.0, 0.5, 2.0, 1.0)]
    rng = torch.Generator().manual_seed(0)
    winners = tournament_select(pool, count=3, tournament_size=4, rng=rng)
    assert [w.fitness for w in winners] == [0.5, 0.5, 0.5]
    assert all(w is not pool[1] for w in winners)


def test_tournament_winners_are_never_worse_than_the_median_on_average():
    pool = [individual(float(f)) for f in range(10)]
    rng = torch.Generator().manual_seed(0)
    winners = tournament_select(pool, count=200, tournament_size=2, rng=rng)
    assert sum(w.fitness for w in winners) / 200 < 4.5


@pytest.mark.parametrize("seed", range(20))
def test_faithful_replacement_only_improves(seed):
    gen = torch.Generator().manual_seed(seed)
    population = [individual(float(f)) for f in torch.rand(4, generator=gen)]
    offspring = [individual(float(f)) for f in torch.rand(3, generator=gen)]
    before = sorted(i.fitness for i in population)
    accepted = replace(population, offspring, count=2, rule="faithful")
    after = sorted(i.fitness for i in population)
    assert all(a <= b for a, b in zip(after, before, strict=True))
    assert accepted <= 2
    assert sum(after) <= sum(before)


def test_offspring_rule_always_takes_the_best_offspring():
    population = [individual(0.1)]
    offspring = [individual(0.9), individual(0.5)]
    assert replace(population, offspring, count=1, rule="offspring") == 1
    assert population[0].fitness == 0.5


def test_replacement_pairs_the_ith_best_offspring_with_population_i_minus_n():
    """The original's pairing: offspring [1.5, 3.5] against locals [1, 2, 3, 4] with two
    replacements compare 1.5 with 3 and 3.5 with 4, so both are accepted (pairing the
    best offspring with the very worst would reject 3.5 against 3)."""
    population = [individual(f) for f in (4.0, 1.0, 3.0, 2.0)]
    offspring = [individual(3.5), individual(1.5)]
    assert replace(population, offspring, count=2, rule="faithful") == 2
    assert [i.fitness for i in population] == [1.0, 1.5, 2.0, 3.5]
    population = [individual(f) for f in (1.0, 2.0, 3.0, 4.0)]
    assert replace(population, [individual(3.5), individual(5.0)], 2, "faithful") == 0


def test_batched_fitness_tables_equal_pairwise_evaluation():
    torch.manual_seed(0)
    gens = [Individual.fresh(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), 1e-3, 0) for _ in range(3)]
    discs = [Individual.fresh(_Critic(), 1e-3, 0) for _ in range(2)]
    real, noise = torch.randn(10, 3), torch.randn(10, 4)
    loss = LOSSES["heuristic"]
    fakes = generator_fakes(gens, noise)
    g_table, d_table = loss_tables(fakes, discs, real, loss)
    with torch.no_grad():
        for i, g in enumerate(gens):
            for j, d in enumerate(discs):
                fake = g.net(noise)
                assert float(g_table[i, j]) == pytest.approx(float(loss.generator(d.net(fake))))
                assert float(d_table[j, i]) == pytest.approx(
                    float(loss.discriminator(d.net(real), d.net(fake)))
                )
    evaluate_fitness(gens, discs, real, fakes, loss, "worst")
    assert [g.fitness for g in gens] == pytest.approx(g_table.max(1).values.tolist())
    evaluate_fitness(gens, discs, None, fakes, loss, "average", assign=("g",))
    assert [g.fitness for g in gens] == pytest.approx(g_table.mean(1).tolist())
    assert [d.fitness for d in discs] == pytest.approx(d_table.max(1).values.tolist())


class _Critic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(1)


def test_allocation_is_exact_and_proportional():
    assert allocate(torch.tensor([0.5, 0.25, 0.25]), 8) == [4, 2, 2]
    counts = allocate(torch.tensor([0.2, 0.3, 0.5]), 7)
    assert sum(counts) == 7
    assert allocate(torch.tensor([1.0, 0.0]), 5) == [5, 0]


def test_mixture_draws_each_generators_share():
    constant = [_Constant(float(v)) for v in (0, 1, 2)]
    samples = sample_mixture(constant, torch.tensor([0.5, 0.0, 0.5]), torch.zeros(10, 1))
    assert sorted(samples.squeeze(1).tolist()) == [0.0] * 5 + [2.0] * 5


def test_generator_table_without_real_data_matches_the_full_one():
    torch.manual_seed(1)
    gens = [Individual.fresh(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), 1e-3, 0) for _ in range(2)]
    discs = [Individual.fresh(_Critic(), 1e-3, 0) for _ in range(3)]
    real, noise = torch.randn(6, 3), torch.randn(6, 4)
    fakes = generator_fakes(gens, noise)
    full, _ = loss_tables(fakes, discs, real, LOSSES["bce"])
    alone, missing = loss_tables(fakes, discs, None, LOSSES["bce"])
    assert missing is None
    assert torch.allclose(full, alone)
    with pytest.raises(ValueError, match="real samples"):
        evaluate_fitness(gens, discs, None, fakes, LOSSES["bce"], "average")


def test_mixture_embeddings_reuse_the_rows_a_candidate_shares():
    torch.manual_seed(2)
    nets = [nn.Linear(2, 3) for _ in range(3)]
    noise = torch.randn(3, 100, 2)
    embedded_rows = []

    def embed(samples: torch.Tensor) -> torch.Tensor:
        embedded_rows.append(samples.shape[0])
        return samples * 2

    cache = MixtureEmbeddings(nets, noise, embed)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    with torch.no_grad():
        expected = torch.cat([nets[k](noise[k, :n]) * 2 for k, n in enumerate([50, 30, 20])])
    assert torch.allclose(cache.of(weights), expected)
    assert sum(embedded_rows) == 100
    moved = cache.of(torch.tensor([0.45, 0.35, 0.2], dtype=torch.float64))
    assert moved.shape[0] == 100
    assert sum(embedded_rows) == 105  # only generator 1's five new rows
    with torch.no_grad():
        assert torch.allclose(moved[45:80], nets[1](noise[1, :35]) * 2)


class _Constant(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.full((z.shape[0], 1), self.value)


@pytest.mark.parametrize("seed", range(30))
def test_mixture_es_never_accepts_a_worse_score(seed):
    rng = torch.Generator().manual_seed(seed)
    target = torch.softmax(torch.randn(4, generator=rng), 0).double()

    def score(w: torch.Tensor) -> float:
        return float((w - target).abs().sum())

    weights = torch.full((4,), 0.25, dtype=torch.float64)
    current = score(weights)
    for _ in range(20):
        new_weights, new_score, accepted = es_step(weights, current, 0.1, score, rng)
        assert new_score <= current
        assert new_score == pytest.approx(score(new_weights))
        assert float(new_weights.sum()) == pytest.approx(1.0)
        assert (new_weights >= 0).all()
        assert accepted == (new_score < current)
        weights, current = new_weights, new_score
    assert current < score(torch.full((4,), 0.25, dtype=torch.float64))


def test_a_generators_ema_moves_by_one_minus_decay_and_travels_with_its_clones():
    """`training.generatorEma`: after a step, ema = decay * ema + (1 - decay) * weights;
    a clone carries a copy of it, and the state holds it for a resume."""
    torch.manual_seed(0)
    individual = Individual.fresh(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), 1e-3, 0)
    individual.keep_ema()
    assert individual.sample_net is individual.ema
    start = {k: v.clone() for k, v in individual.ema.state_dict().items()}
    with torch.no_grad():
        for parameter in individual.net.parameters():
            parameter.add_(1.0)
    individual.net[1].running_mean.fill_(5.0)
    individual.update_ema(0.9)
    ema = individual.ema.state_dict()
    assert torch.allclose(ema["0.weight"], start["0.weight"] + 0.1)
    assert torch.equal(ema["1.running_mean"], torch.full((4,), 5.0))  # buffers are copied
    assert not any(p.requires_grad for p in individual.ema.parameters())
    twin = individual.clone()
    twin.update_ema(0.0)
    assert not torch.equal(twin.ema.state_dict()["0.weight"], ema["0.weight"])
    restored = Individual.fresh(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), 1e-3, 0)
    restored.keep_ema()
    restored.load_state_dict(individual.state_dict())
    for name, tensor in restored.ema.state_dict().items():
        assert torch.equal(tensor, individual.ema.state_dict()[name]), name
    plain = Individual.fresh(nn.Linear(3, 4), 1e-3, 0)
    assert plain.sample_net is plain.net and "ema.weight" not in plain.state_dict().tensors

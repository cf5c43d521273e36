"""Step 6 on tiny grids: the mixture ES, keep-best and keep-last, the end schedule, and the
EMA generators the mixture samples."""

from pathlib import Path

import pytest
import torch
from engine_runs import (
    assert_resume_is_bit_exact,
    final_state,
    layout_result,
    two_cells,
    with_spec,
)
from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.neighbourhood import InProcessExchange
from lipizzaner_cell.algorithm.selection import best
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_core.spec import parse_run


def test_a_missing_neighbour_is_left_out_and_its_weight_kept(tiny_manifest):
    run = parse_run(tiny_manifest)
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    exchange = InProcessExchange()
    engine = CellEngine(run, 0, exchange.provider([1, 2]), dataset)
    report = engine.step()
    assert report.neighbours_present == 0
    assert engine.mixture.weights[1] == engine.mixture.weights[2] == pytest.approx(1 / 3)


def colour_folder(path) -> dict:
    """40 plain-coloured 32x32 PNGs, as an image-folder dataset."""
    from PIL import Image

    path.mkdir()
    gen = torch.Generator().manual_seed(0)
    for k in range(40):
        colour = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=gen))
        Image.new("RGB", (32, 32), colour).save(path / f"{k}.png")
    return {"name": "image-folder", "path": str(path), "imageSize": 32}


def test_a_colour_image_run_runs_the_mixture_es_and_reports_a_score(tiny_manifest, tmp_path):
    manifest = with_spec(tiny_manifest, grid={"rows": 1, "cols": 2}, generations=3)
    manifest["spec"].update(
        dataset=colour_folder(tmp_path / "images"),
        training={"batchSize": 20, "batchesPerGeneration": 2},
    )
    outcome = run_in_process(parse_run(manifest), resume=False)
    scores = [r.mixture_score for r in outcome.reports[0]]
    assert all(s is not None and s > 0 for s in scores)
    assert set(outcome.manifest["scores"]) == {"swd", "precision", "recall"}
    weights = outcome.engines[0].mixture.weights
    assert sum(weights.values()) == pytest.approx(1.0)


def test_a_colour_run_reports_inception_scores_while_its_es_uses_swd(
    tiny_manifest, tmp_path, inception_weights
):
    """`score.final: inception-v3`: the cheap objective every generation, FID, KID, IS and
    precision/recall in Inception-v3's features at the end (random weights here)."""
    manifest = with_spec(tiny_manifest, grid={"rows": 1, "cols": 1}, generations=2)
    manifest["spec"]["coevolution"]["tournamentSize"] = 1
    manifest["spec"].update(
        dataset=colour_folder(tmp_path / "images"),
        training={"batchSize": 20, "batchesPerGeneration": 2},
        score={
            "final": "inception-v3",
            "inceptionWeights": str(inception_weights),
            "finalSamples": 100,
        },
    )
    outcome = run_in_process(parse_run(manifest), resume=False)
    assert outcome.reports[0][0].mixture_score is not None
    manifest_out = outcome.manifest
    assert manifest_out["objective"]["name"] == "swd"
    expected = {"fid", "kid", "kid_std", "inception_score", "inception_score_std"}
    assert expected | {"precision", "recall"} == set(manifest_out["scores"])
    assert set(manifest_out["trainScores"]) == set(manifest_out["scores"])
    assert manifest_out["scores"]["fid"] > 0
    # The real data's Inception embeddings (held-out and training) are cached for the run.
    assert len(list(Path(outcome.output_uri, "references").glob("*.safetensors"))) == 2


def test_keep_best_ends_with_the_best_mixture_of_the_run_and_says_from_when(tiny_manifest):
    """Keep-best (the default): the kept mixture is the best the ES scored over the run,
    and the cell ends with it unless the last one scores better on the final samples."""
    manifest = with_spec(tiny_manifest, generations=8)
    manifest["spec"]["mixture"]["sigma"] = 0.2  # a lively ES: the score moves both ways
    outcome = run_in_process(parse_run(manifest), resume=False)
    for engine, reports in zip(outcome.engines, outcome.reports, strict=True):
        scores = [r.mixture_score for r in reports]
        assert engine.mixture.kept.score == min(scores)
        assert engine.mixture.kept.generation == scores.index(min(scores)) + 1
    results = [layout_result(manifest, cell) for cell in range(4)]
    for result in results:
        assert result["scoredOn"] == "validation"
        assert result["trainScores"].keys() == result["scores"].keys()
        chosen = [c for c in result["candidates"] if c["chosen"]]
        assert [c["generation"] for c in chosen] == [result["mixtureGeneration"]]
        assert chosen[0]["objective"] == min(c["objective"] for c in result["candidates"])
        assert result["objective"]["value"] == chosen[0]["objective"]
    best = min(results, key=lambda r: r["objective"]["value"])
    assert outcome.manifest["mixtureGeneration"] == best["mixtureGeneration"]


def test_keep_last_ends_with_the_last_generations_mixture(tiny_manifest):
    manifest = with_spec(tiny_manifest, generations=3)
    manifest["spec"]["mixture"]["keep"] = "last"
    manifest["spec"]["dataset"]["validationFraction"] = 0.0
    outcome = run_in_process(parse_run(manifest), resume=False)
    assert all(engine.mixture.kept is None for engine in outcome.engines)
    result = layout_result(manifest, 0)
    assert result["mixtureGeneration"] == 3 and len(result["candidates"]) == 1
    assert (result["scoredOn"], result["trainScores"]) == ("training", {})


def test_the_end_schedule_scores_nothing_while_training_and_runs_the_es_at_the_end(
    tiny_manifest,
):
    """`mixture.schedule: end` (Lipizzaner 2.0): the weights stay uniform and no score is
    taken during training; `esGenerationsAtEnd` ES steps then move them."""
    manifest = with_spec(tiny_manifest, generations=3)
    mixture = manifest["spec"]["mixture"]
    mixture.update(schedule="end", keep="last", esGenerationsAtEnd=20, sigma=0.2)
    outcome = run_in_process(parse_run(manifest), resume=False)
    assert {r.mixture_score for reports in outcome.reports for r in reports} == {None}
    moved = []
    for cell, engine in enumerate(outcome.engines):
        written = {m["cell"]: m["weight"] for m in layout_result(manifest, cell)["mixture"]}
        assert written == pytest.approx(engine.mixture.weights), "the end's ES weights are written"
        moved.append(any(w != pytest.approx(1 / len(written)) for w in written.values()))
    assert any(moved), "20 ES steps of sigma 0.2 move some cell's weights"


def test_generator_emas_are_what_the_mixture_samples_and_they_resume_bit_for_bit(
    tiny_manifest, tmp_path
):
    """`training.generatorEma`: the mixture (its score, keep-best, the cell's result) uses
    each centre's EMA copy, neighbours' included; training moves the generators
    themselves; the EMAs are checkpointed and resumed bit for bit."""
    manifest = with_spec(tiny_manifest, generations=3)
    manifest["spec"]["training"]["generatorEma"] = {"decay": 0.9}
    assert_resume_is_bit_exact(manifest, tmp_path)
    engines = two_cells(with_spec(manifest, grid={"rows": 1, "cols": 2}))
    engines[0].step()
    hood = engines[0].snapshot_neighbourhood()
    _, nets = engines[0].centres(hood, "generator")
    own = best(engines[0].generators)
    assert nets[0] is own.ema and nets[1] is engines[0].imports.net("generator", 1)
    assert nets[1] is hood.generators[-1].ema  # the neighbour's EMA came with its state
    weights = own.net.state_dict()
    assert any(not torch.equal(t, weights[n]) for n, t in own.ema.state_dict().items())
    assert engines[0].centre_state().generator_ema.keys() == weights.keys()


def test_an_ema_that_forgets_at_once_is_the_run_without_one(tiny_manifest, tmp_path):
    """With decay (almost) 0 each EMA copy is its generator after every step, so the run
    must end exactly as one without EMAs: the EMA's plumbing (selection, replacement, the
    exchange, the mixture) changes nothing but which weights are sampled."""
    plain = with_spec(tiny_manifest, generations=4, output={"uri": str(tmp_path / "a")})
    plain["spec"]["training"]["generatorEma"] = {"decay": 0.0}  # off: no copies kept
    forgetful = with_spec(plain, output={"uri": str(tmp_path / "b")})
    forgetful["spec"]["training"]["generatorEma"] = {"decay": 1e-12}
    reference = final_state(run_in_process(parse_run(plain), resume=False))
    with_ema = final_state(run_in_process(parse_run(forgetful), resume=False))
    for (ref_tensors, ref_meta), (ema_tensors, ema_meta) in zip(reference, with_ema, strict=True):
        assert ref_meta == ema_meta
        assert ref_tensors.keys() < ema_tensors.keys()
        assert all(torch.equal(t, ema_tensors[n]) for n, t in ref_tensors.items())
        for name, average in ema_tensors.items():
            if ".ema." in name:
                assert torch.equal(average, ema_tensors[name.replace(".ema.", ".net.", 1)])

"""Sequences: the sine-wave and array datasets, recurrent networks, the spectrum score,
and the shipped example (`examples/sequences.yaml`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lipizzaner_cell.algorithm.networks import build_discriminator, build_generator
from lipizzaner_cell.commands.cli import main
from lipizzaner_cell.data.datasets import Dataset
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.ensembles.samples import render_png
from lipizzaner_cell.scores.choice import build_scorer
from lipizzaner_cell.scores.scorers import SpectrumScorer
from lipizzaner_core.spec.datasets import SequencesSpec, SineWavesSpec
from lipizzaner_core.spec.training import NetworkPartSpec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sequences.yaml"


def waves(**fields) -> object:
    return load_dataset(SineWavesSpec(name="sine-waves", **fields), seed=0)


def test_sine_waves_are_seeded_and_in_model_space():
    data = waves(size=500, length=16, waves=2, minFrequency=2, maxFrequency=2)
    assert data.shape == (16, 2) and len(data) == 500
    assert data.data.abs().max() <= 1.0
    assert torch.equal(
        data.data, waves(size=500, length=16, waves=2, minFrequency=2, maxFrequency=2).data
    )
    # Two cycles per sequence: the power sits in FFT bin 2.
    power = torch.fft.rfft(data.data[:, :, 0], dim=1).abs().square().mean(0)
    assert int(power.argmax()) == 2


def test_sequence_files_are_scaled_per_channel_and_map_back(tmp_path):
    rng = np.random.default_rng(0)
    values = np.stack([rng.normal(10, 2, (40, 12)), rng.uniform(0, 1, (40, 12))], axis=2)
    np.savez(tmp_path / "series.npz", other=np.zeros(3), series=values)
    spec = SequencesSpec(name="sequences", path=str(tmp_path / "series.npz"), key="series")
    data = load_dataset(spec, seed=0)
    assert data.shape == (12, 2)
    for channel in range(2):
        assert data.data[:, :, channel].min() == -1.0 and data.data[:, :, channel].max() == 1.0
    assert np.allclose(data.values.to_data(data.data.numpy()), values, atol=1e-5)
    np.save(tmp_path / "one.npy", values[:, :, 0])
    assert load_dataset(
        SequencesSpec(name="sequences", path=str(tmp_path / "one.npy")), 0
    ).shape == (12, 1)
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(ValueError, match=r"dataset.path: need N x T x C"):
        load_dataset(SequencesSpec(name="sequences", path=str(tmp_path / "flat.npy")), seed=0)
    np.save(tmp_path / "evil.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        load_dataset(SequencesSpec(name="sequences", path=str(tmp_path / "evil.npy")), seed=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_networks_shape_sequences_and_score_each_alone(cell):
    part = NetworkPartSpec(architecture="rnn", cell=cell, hiddenSizes=[8, 6])
    generator, discriminator = build_generator(part, 5, (20, 3)), build_discriminator(part, (20, 3))
    fakes = generator(torch.randn(4, 5))
    assert fakes.shape == (4, 20, 3) and fakes.abs().max() <= 1.0
    logits = discriminator(fakes)
    assert logits.shape == (4,)
    assert torch.allclose(discriminator(fakes[:1]), logits[:1], atol=1e-6)  # no batch effects


def test_the_spectrum_score_tells_real_waves_from_collapse_and_noise():
    data = waves(size=3000, length=32)
    train, held = data.split(0.5)
    scorer = build_scorer("auto", held)
    assert isinstance(scorer, SpectrumScorer) and scorer.objective_name == "spectrum"
    real = scorer.objective(train.data)
    steps = torch.arange(32) / 32
    one_frequency = torch.sin(2 * torch.pi * 2 * steps).repeat(1500, 1).unsqueeze(2)
    noise = torch.rand(1500, 32, 1) * 2 - 1
    assert real < 0.1 < 1.0 < scorer.objective(one_frequency) < scorer.objective(noise)
    report = scorer.final_scores(scorer.embed(train.data))
    assert set(report) == {"spectrum", "autocorrelation", "precision", "recall"}
    flat = Dataset(name="flat", data=torch.zeros(4, 2), values=data.values)
    with pytest.raises(ValueError, match=r"mixture.scoreType: spectrum needs sequences"):
        build_scorer("spectrum", flat)


def test_a_sequence_preview_draws_samples_over_real_curves():
    data = waves(size=50, length=16)
    description = {"shape": [16, 1], "reference": data.data[:4].numpy().tolist()}
    png = render_png(data.data[4:10].numpy(), description, "curves")
    assert png.startswith(b"\x89PNG")


def test_the_sequences_example_learns_the_waves_spectrum(tmp_path):
    """The shipped example, in one process: its ensemble's spectrum distance ends far
    below an untrained generator's (about 1.45) and a one-frequency collapse's (1.15)."""
    output = tmp_path / "sequences"
    assert (
        main(
            [
                "run",
                str(EXAMPLE),
                "--output",
                str(output),
                "--quiet",
                "--in-process",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert (output / "samples.png").exists()
    scores = json.loads((output / "ensemble" / "manifest.json").read_text())["scores"]
    assert scores["spectrum"] < 0.5

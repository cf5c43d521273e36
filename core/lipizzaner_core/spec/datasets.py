"""The `dataset` section of a run: one model per kind of data, told apart by `name`."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from lipizzaner_core.spec.base import SpecModel


class DatasetBase(SpecModel):
    sampling_ratio: float = Field(1.0, gt=0.0, le=1.0)
    validation_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Samples held out from training, the same in every cell and run; the "
        "mixture ES, keep-best and the ensemble's choice score against them (0: score "
        "against the training data)",
    )


class LabelledBase(DatasetBase):
    """A dataset whose samples have classes: semi-supervised runs can use them."""

    label_rate: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="semiSupervised: the fraction of the training samples whose labels the "
        "run may use, drawn per cell from its seed, the same count from every class "
        "(default: all)",
    )


class GaussianRingSpec(LabelledBase):
    name: Literal["gaussian-ring"]
    modes: int = Field(8, ge=1)
    radius: float = Field(2.0, gt=0)
    std: float = Field(0.02, gt=0)
    size: int = Field(10_000, ge=1)


class GaussianGridSpec(LabelledBase):
    name: Literal["gaussian-grid"]
    modes_per_side: int = Field(5, ge=1)
    spacing: float = Field(2.0, gt=0)
    std: float = Field(0.05, gt=0)
    size: int = Field(10_000, ge=1)


class IdxImagesSpec(LabelledBase):
    """Images and labels in IDX files (MNIST's format, gzipped or not)."""

    path: str = Field(..., min_length=1, description="Directory or URI holding the IDX files")
    split: Literal["auto", "train", "test"] = Field(
        "auto", description="auto: the training split if its files are there, else the test split"
    )


class MnistSpec(IdxImagesSpec):
    name: Literal["mnist"]
    download: bool = False
    mirror: str = Field(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        description="Where `download: true` fetches the canonical files from",
    )


class FashionMnistSpec(IdxImagesSpec):
    """Zalando's Fashion-MNIST: 28x28 grey clothes in MNIST's IDX files and file names."""

    name: Literal["fashion-mnist"]


class Cifar10Spec(LabelledBase):
    name: Literal["cifar10"]
    path: str = Field(
        ...,
        min_length=1,
        description="Directory or URI holding CIFAR-10's binary version (data_batch_<n>.bin, "
        "test_batch.bin: a label byte and 3,072 pixel bytes per image); its Python version "
        "is pickled and never read",
    )
    split: Literal["auto", "train", "test"] = Field(
        "auto", description="auto: the training batches if any are there, else the test batch"
    )


class ImageFolderSpec(LabelledBase):
    name: Literal["image-folder"]
    path: str = Field(
        ...,
        min_length=1,
        description="Directory or URI of PNG/JPG images; with labelRate, one sub-folder per "
        "class (its name is the class)",
    )
    image_size: Literal[28, 32, 64, 128] = 64
    channels: Literal[1, 3] = 3
    crop: Literal["none", "center"] = Field(
        "none",
        description="center: cut the largest centred square first (CelebA's faces), so the "
        "resize keeps proportions",
    )


class SequencesSpec(DatasetBase):
    name: Literal["sequences"]
    path: str = Field(
        ..., min_length=1, description=".npy or .npz array of N x T x C (or N x T: one channel)"
    )
    key: str | None = None


class SineWavesSpec(DatasetBase):
    """Synthetic sequences: sine waves of random frequency and phase, one per channel."""

    name: Literal["sine-waves"]
    size: int = Field(10_000, ge=1)
    length: int = Field(64, ge=4, description="time steps per sequence")
    waves: int = Field(1, ge=1, le=16, description="channels: one wave each")
    min_frequency: float = Field(1.0, gt=0, description="cycles per sequence, at least")
    max_frequency: float = Field(4.0, gt=0, description="cycles per sequence, at most")

    @model_validator(mode="after")
    def _frequency_range(self) -> SineWavesSpec:
        if self.max_frequency < self.min_frequency:
            raise ValueError(
                f"maxFrequency: must be >= minFrequency ({self.min_frequency}), "
                f"got {self.max_frequency}"
            )
        return self


class ArraySpec(LabelledBase):
    name: Literal["array"]
    path: str = Field(..., min_length=1, description=".npy or .npz file")
    key: str | None = None
    labels_key: str | None = Field(
        None, min_length=1, description=".npz: the key of the samples' integer classes"
    )

    @model_validator(mode="after")
    def _labels_for_rate(self) -> ArraySpec:
        if self.label_rate is not None and self.labels_key is None:
            raise ValueError("labelRate: an array's labels need labelsKey (an .npz key)")
        return self


DATASET_SPECS = (
    GaussianRingSpec,
    GaussianGridSpec,
    MnistSpec,
    FashionMnistSpec,
    Cifar10Spec,
    ImageFolderSpec,
    ArraySpec,
    SequencesSpec,
    SineWavesSpec,
)
DatasetSpec = Annotated[
    GaussianRingSpec
    | GaussianGridSpec
    | MnistSpec
    | FashionMnistSpec
    | Cifar10Spec
    | ImageFolderSpec
    | ArraySpec
    | SequencesSpec
    | SineWavesSpec,
    Field(discriminator="name"),
]
DATASET_NAMES = {get_args(spec.model_fields["name"].annotation)[0] for spec in DATASET_SPECS}


# The datasets dcgan networks apply to.
IMAGE_DATASETS = ("mnist", "fashion-mnist", "cifar10", "image-folder")


# The datasets whose samples can have classes (`labelRate`, semi-supervised runs).
LABELLED_DATASETS = tuple(
    get_args(spec.model_fields["name"].annotation)[0]
    for spec in DATASET_SPECS
    if issubclass(spec, LabelledBase)
)


# The datasets of N x T x C sequences, which rnn networks apply to.
SEQUENCE_DATASETS = ("sequences", "sine-waves")

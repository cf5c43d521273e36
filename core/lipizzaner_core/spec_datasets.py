"""The `dataset` section of a run: one model per kind of data, told apart by `name`."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field

from lipizzaner_core.spec_base import SpecModel


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


class GaussianRingSpec(DatasetBase):
    name: Literal["gaussian-ring"]
    modes: int = Field(8, ge=1)
    radius: float = Field(2.0, gt=0)
    std: float = Field(0.02, gt=0)
    size: int = Field(10_000, ge=1)


class GaussianGridSpec(DatasetBase):
    name: Literal["gaussian-grid"]
    modes_per_side: int = Field(5, ge=1)
    spacing: float = Field(2.0, gt=0)
    std: float = Field(0.05, gt=0)
    size: int = Field(10_000, ge=1)


class MnistSpec(DatasetBase):
    name: Literal["mnist"]
    path: str = Field(..., min_length=1, description="Directory or URI holding the IDX files")
    split: Literal["auto", "train", "test"] = "auto"
    download: bool = False
    mirror: str = Field(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        description="Where `download: true` fetches the canonical files from",
    )


class ImageFolderSpec(DatasetBase):
    name: Literal["image-folder"]
    path: str = Field(..., min_length=1)
    image_size: Literal[28, 32, 64] = 64
    channels: Literal[1, 3] = 3


class ArraySpec(DatasetBase):
    name: Literal["array"]
    path: str = Field(..., min_length=1, description=".npy or .npz file")
    key: str | None = None


DATASET_SPECS = (GaussianRingSpec, GaussianGridSpec, MnistSpec, ImageFolderSpec, ArraySpec)
DatasetSpec = Annotated[
    GaussianRingSpec | GaussianGridSpec | MnistSpec | ImageFolderSpec | ArraySpec,
    Field(discriminator="name"),
]
DATASET_NAMES = {get_args(spec.model_fields["name"].annotation)[0] for spec in DATASET_SPECS}


IMAGE_DATASETS = ("mnist", "image-folder")  # the datasets dcgan networks apply to


def is_image_dataset(dataset: Any) -> bool:
    return dataset.name in IMAGE_DATASETS

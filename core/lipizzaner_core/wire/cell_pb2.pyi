from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CentreRequest(_message.Message):
    __slots__ = ("newer_than_generation",)
    NEWER_THAN_GENERATION_FIELD_NUMBER: _ClassVar[int]
    newer_than_generation: int
    def __init__(self, newer_than_generation: _Optional[int] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "length")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    length: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class CentreHeader(_message.Message):
    __slots__ = ("cell", "generation", "generator_lr", "discriminator_lr", "generator_fitness", "discriminator_fitness", "mixture_weights", "generator", "discriminator", "payload_bytes", "generator_moments", "discriminator_moments", "generator_ema", "generator_origin", "discriminator_origin")
    class MixtureWeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    CELL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_LR_FIELD_NUMBER: _ClassVar[int]
    DISCRIMINATOR_LR_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FITNESS_FIELD_NUMBER: _ClassVar[int]
    DISCRIMINATOR_FITNESS_FIELD_NUMBER: _ClassVar[int]
    MIXTURE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    DISCRIMINATOR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_MOMENTS_FIELD_NUMBER: _ClassVar[int]
    DISCRIMINATOR_MOMENTS_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_EMA_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    DISCRIMINATOR_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    cell: int
    generation: int
    generator_lr: float
    discriminator_lr: float
    generator_fitness: float
    discriminator_fitness: float
    mixture_weights: _containers.ScalarMap[int, float]
    generator: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    discriminator: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    payload_bytes: int
    generator_moments: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    discriminator_moments: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    generator_ema: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    generator_origin: Origin
    discriminator_origin: Origin
    def __init__(self, cell: _Optional[int] = ..., generation: _Optional[int] = ..., generator_lr: _Optional[float] = ..., discriminator_lr: _Optional[float] = ..., generator_fitness: _Optional[float] = ..., discriminator_fitness: _Optional[float] = ..., mixture_weights: _Optional[_Mapping[int, float]] = ..., generator: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., discriminator: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., payload_bytes: _Optional[int] = ..., generator_moments: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., discriminator_moments: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., generator_ema: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., generator_origin: _Optional[_Union[Origin, _Mapping]] = ..., discriminator_origin: _Optional[_Union[Origin, _Mapping]] = ...) -> None: ...

class Origin(_message.Message):
    __slots__ = ("cell", "generation")
    CELL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    cell: int
    generation: int
    def __init__(self, cell: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class CentreChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: CentreHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[CentreHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CellStatus(_message.Message):
    __slots__ = ("cell", "phase", "generation", "generations", "generator_loss", "discriminator_loss", "generator_fitness", "discriminator_fitness", "scores", "restarts", "missing_neighbours", "rejected_states", "offspring_accepted", "offspring_offered")
    class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PHASE_UNSPECIFIED: _ClassVar[CellStatus.Phase]
        STARTING: _ClassVar[CellStatus.Phase]
        TRAINING: _ClassVar[CellStatus.Phase]
        FINISHING: _ClassVar[CellStatus.Phase]
        SUCCEEDED: _ClassVar[CellStatus.Phase]
        FAILED: _ClassVar[CellStatus.Phase]
    PHASE_UNSPECIFIED: CellStatus.Phase
    STARTING: CellStatus.Phase
    TRAINING: CellStatus.Phase
    FINISHING: CellStatus.Phase
    SUCCEEDED: CellStatus.Phase
    FAILED: CellStatus.Phase
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CELL_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_LOSS_FIELD_NUMBER: _ClassVar[int]
    DISCRIMINATOR_LOSS_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FITNESS_FIELD_NUMBER: _ClassVar[int]
    DISCRIMINATOR_FITNESS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    MISSING_NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_STATES_FIELD_NUMBER: _ClassVar[int]
    OFFSPRING_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    OFFSPRING_OFFERED_FIELD_NUMBER: _ClassVar[int]
    cell: int
    phase: CellStatus.Phase
    generation: int
    generations: int
    generator_loss: float
    discriminator_loss: float
    generator_fitness: float
    discriminator_fitness: float
    scores: _containers.ScalarMap[str, float]
    restarts: int
    missing_neighbours: _containers.RepeatedScalarFieldContainer[int]
    rejected_states: int
    offspring_accepted: int
    offspring_offered: int
    def __init__(self, cell: _Optional[int] = ..., phase: _Optional[_Union[CellStatus.Phase, str]] = ..., generation: _Optional[int] = ..., generations: _Optional[int] = ..., generator_loss: _Optional[float] = ..., discriminator_loss: _Optional[float] = ..., generator_fitness: _Optional[float] = ..., discriminator_fitness: _Optional[float] = ..., scores: _Optional[_Mapping[str, float]] = ..., restarts: _Optional[int] = ..., missing_neighbours: _Optional[_Iterable[int]] = ..., rejected_states: _Optional[int] = ..., offspring_accepted: _Optional[int] = ..., offspring_offered: _Optional[int] = ...) -> None: ...

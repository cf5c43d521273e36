"""A part's state as a checkpoint keeps it: named tensors, and plain values JSON can hold.

Each owner says what its state is (`state_dict`) and takes it back (`load_state_dict`);
a parent nests its children's states under a key, as Lightning's loops do. A new field
is then saved by the class that has it, and `runtime/checkpoint.py` only writes files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class State:
    """Tensors by dotted name (the checkpoint's safetensors file) and the rest (its JSON)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def nest(self, key: str, child: State) -> dict[str, Any]:
        """Take `child`'s tensors in under `key.`; its values, for the caller to place."""
        self.tensors.update({f"{key}.{name}": tensor for name, tensor in child.tensors.items()})
        return child.values

    def child(self, key: str, values: dict[str, Any] | None = None) -> State:
        """The state nested under `key`, with the values the caller kept for it."""
        prefix = f"{key}."
        tensors = {
            name[len(prefix) :]: tensor
            for name, tensor in self.tensors.items()
            if name.startswith(prefix)
        }
        return State(tensors, values or {})

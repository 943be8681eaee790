"""What a safetensors checkpoint holds, read from the file headers alone (no tensor is loaded)."""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

FLOATING = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str  # safetensors dtype code: F32, BF16, I32, U8...
    numel: int
    nbytes: int  # as stored

    @property
    def floating(self) -> bool:
        return self.dtype in FLOATING


def stored_tensors(model_dir: str | Path) -> list[StoredTensor]:
    """Every tensor of the directory's *.safetensors files, from their JSON headers."""
    tensors = []
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, tensor in header.items():
            if name != "__metadata__":
                start, end = tensor["data_offsets"]
                tensors.append(StoredTensor(name, tensor["dtype"], math.prod(tensor["shape"]), end - start))
    return tensors

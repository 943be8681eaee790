"""What a backend says about what actually ran: the typed answer of `Backend.describe()`.

Reports read the typed fields (mechanism, dtype, device, threads, weight bytes); anything specific
to one backend goes in `details`, shown as is and never read by the harness.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BackendDescription(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mechanism: str = Field(description="how the model ran: runtime, attention path, decode loop")
    dtype: str = Field(description="weight/activation type as loaded, e.g. float32, int8 weights")
    device: str = Field(description="where it ran: cpu, cuda, cuda:0, cpu + gpu offload...")
    threads: int | None = Field(None, description="intra-op threads the runtime actually uses")
    model_size_bytes: int | None = Field(None, description="bytes of weights as stored (quantized data + scales)")
    n_parameters: int | None = Field(None, description="number of weights the model stands for")
    quantization: str | None = Field(None, description="quantization method, or None for none")
    versions: dict[str, str] = Field(default_factory=dict, description="library versions that ran it")
    details: dict[str, Any] = Field(default_factory=dict, description="backend-specific facts, shown as is")
    conversion_seconds: float | None = Field(
        None, description="wall time of the conversion that made the files it ran (export, GGUF conversion), "
        "measured when they were built, even if this case found them cached; None: no conversion")
    conversion_peak_rss_bytes: int | None = Field(None, description="peak RSS of that conversion's process")

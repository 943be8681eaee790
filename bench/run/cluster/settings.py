"""The suite's optional `cluster:` section: where a unit may run on a Ray cluster, and what a lost node costs.

    cluster:
      resources: {pool-a: 1}             # custom Ray resources every unit needs (a node must offer them)
      labels: {ray.io/accelerator-type: H100}   # node labels every unit's node must have
      variants:                          # more, for the units holding a variant (by its label)
        fp16-eager: {labels: {gpu-kind: h100}, gpus: 1}
      retry_lost_units: 1                # a unit whose node died runs again once (its unfinished cases)
      prepare_envs: false                # create the side environments the suite names on each node first

Local runs ignore the section (a shard or a local run has one machine).
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Placement(BaseModel):
    """What a unit asks of its node beyond what its cases imply (bench/run/cluster/placement.py)."""

    model_config = STRICT

    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per unit, e.g. "
                                        "{pool-a: 1} (a node started with --resources '{\"pool-a\": 4}')")
    labels: dict[str, str] = Field(default_factory=dict, description="node labels the unit's node must have "
                                   "(Ray label selector), e.g. {ray.io/accelerator-type: H100}")
    gpus: float | None = Field(None, ge=0, description="GPUs per unit (default: 1 when a case's device is CUDA)")
    cpus: float | None = Field(None, gt=0, description="CPUs per unit (default: its cases' threads)")

    @field_validator("resources")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        reserved = {"CPU", "GPU", "memory", "object_store_memory"} & set(value)
        if reserved:
            raise ValueError(f"{', '.join(sorted(reserved))}: use cpus / gpus for Ray's built-in resources")
        if any(not amount > 0 for amount in value.values()):
            raise ValueError("resource amounts must be > 0")
        return value


class ClusterSettings(Placement):
    """The suite-wide placement, per-variant additions, and what happens when a node dies mid-unit."""

    variants: dict[str, Placement] = Field(default_factory=dict, description="by variant label: added to the "
                                           "placement of every unit that holds that variant")
    retry_lost_units: int = Field(0, ge=0, le=3, description="times a unit whose node died runs again (its "
                                  "unfinished cases, on any node that fits); then they are recorded as failed")
    prepare_envs: bool = Field(False, description="create the side environments the suite's interpreters name "
                               "(env:NAME) on every node before its units; else a missing one skips its cases")

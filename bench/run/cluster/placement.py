"""What one unit asks of a node, and which of a cluster's nodes can give it.

A unit's cases run on one node (bench/run/plan.py). CPUs: its cases' `threads`, the largest (an interleaved
unit's variants are resident together but measure one at a time; a serving case needs one more for its
client). GPUs: 1 when a case's options put it on CUDA (`device: cuda`, `execution_provider: cuda`,
`n_gpu_layers` not 0), else 0. Then the suite's `cluster:` section: its resources and labels, and those of
every variant the unit holds; `gpus` / `cpus` there override the defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.errors import BadInput
from bench.records.schema import CaseSpec
from bench.run.cluster.settings import ClusterSettings, Placement
from bench.run.plan import Unit


@dataclass(frozen=True)
class Request:
    """Ray task options of one unit: num_cpus, num_gpus, custom resources, node label selector."""

    cpus: float
    gpus: float
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def ray_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.resources:
            options["resources"] = dict(self.resources)
        if self.labels:
            options["label_selector"] = dict(self.labels)
        return options

    def fits(self, node: dict[str, Any]) -> bool:
        """Whether a node (an entry of `ray.nodes()`: Resources, Labels) could ever run this unit."""
        total = node.get("Resources") or {}
        wanted = {"CPU": self.cpus, "GPU": self.gpus, **self.resources}
        if any(amount > total.get(name, 0.0) for name, amount in wanted.items() if amount):
            return False
        labels = node.get("Labels") or {}
        return all(labels.get(key) == value for key, value in self.labels.items())

    def describe(self) -> str:
        parts = [f"{self.cpus:g} CPU", f"{self.gpus:g} GPU"] + [f"{v:g} {k}" for k, v in self.resources.items()]
        return ", ".join(parts) + "".join(f", label {k}={v}" for k, v in self.labels.items())


def uses_gpu(case: CaseSpec) -> bool:
    options = case.options
    return (str(options.get("device", "")).startswith("cuda")
            or "cuda" in str(options.get("execution_provider", "")).lower()
            or options.get("n_gpu_layers") not in (None, 0))


def _merge(placements: list[Placement], unit: Unit) -> Placement:
    resources: dict[str, float] = {}
    labels: dict[str, str] = {}
    gpus = cpus = None
    for placement in placements:
        for name, amount in placement.resources.items():
            resources[name] = max(resources.get(name, 0.0), amount)
        for key, value in placement.labels.items():
            if labels.setdefault(key, value) != value:
                raise BadInput(f"cluster: the variants of one unit ({unit.label}) ask for node label {key} = "
                               f"{labels[key]!r} and {value!r}: they run on one node, so give them one label")
        gpus = placement.gpus if placement.gpus is not None else gpus
        cpus = placement.cpus if placement.cpus is not None else cpus
    return Placement(resources=resources, labels=labels, gpus=gpus, cpus=cpus)


def request(unit: Unit, settings: ClusterSettings) -> Request:
    """The unit's Ray task options (BadInput when its variants' labels contradict each other)."""
    chosen = [settings] + [settings.variants[c.variant] for c in unit.cases if c.variant in settings.variants]
    merged = _merge(chosen, unit)
    client = 1 if any(c.task == "serving" for c in unit.cases) else 0
    cpus = merged.cpus if merged.cpus is not None else max(c.threads for c in unit.cases) + client
    gpus = merged.gpus if merged.gpus is not None else float(any(uses_gpu(c) for c in unit.cases))
    return Request(cpus=float(cpus), gpus=float(gpus), resources=merged.resources, labels=merged.labels)

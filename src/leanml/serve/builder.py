"""From a deploy config to a serving runtime: build the families, attach (or measure) profiles, assemble.

Above the data plane and the control plane (it measures with `leanml.serve.control.profiles` and
builds a `leanml.serve.dataplane.runtime.Runtime`), so neither imports it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from leanml.serve.config import DeployConfig, DeploymentConfig
from leanml.serve.control.profiles import fingerprint, profile_variant
from leanml.serve.dataplane.runtime import Runtime
from leanml.serve.types import VariantProfile
from leanml.serve.variants.base import Variant
from leanml.serve.variants.family import Family
from leanml.serve.variants.prototypes import build_family

log = logging.getLogger("leanml.serve")


def index_profiles(profiles: dict[str, dict[str, VariantProfile]]) -> dict[str, VariantProfile]:
    """Profiles by fingerprint (what they were measured for), whatever deployment name they sat under."""
    out: dict[str, VariantProfile] = {}
    for vs in profiles.values():
        for p in vs.values():
            fp = p.extra.get("fingerprint")
            if fp:
                out[fp] = p
    return out


class VariantBuilder:
    """Builds and caches variants across reconfigurations, so an unchanged variant is never rebuilt."""

    def __init__(self, profiles: dict[str, dict[str, VariantProfile]] | None = None) -> None:
        self.by_fp = index_profiles(profiles or {})
        self._variants: dict[str, Variant] = {}
        self._families: dict[str, Family] = {}
        self.measured: dict[str, VariantProfile] = {}  # profiles measured here (not in the file)

    def build(self, dc: DeploymentConfig, names: Iterable[str] | None = None, *, measure_missing: bool = True,
              force_measure: bool = False) -> dict[str, Variant]:
        """The deployment's variants (all of ``dc.variants`` unless ``names``), each with a profile."""
        names = list(names or dc.variants)
        fps = {n: fingerprint(dc.prototype, dc.params, n) for n in names}
        missing = [n for n in names if fps[n] not in self._variants]
        if missing:
            fam = build_family(dc.prototype, dc.params, missing)
            for n in missing:
                self._variants[fps[n]] = fam.variants[n]
                self._families[fps[n]] = fam
        out = {}
        for n in names:
            v = self._variants[fps[n]]
            prof = None if force_measure else self.by_fp.get(fps[n])
            if prof is None and (measure_missing or force_measure):
                log.warning("measuring variant %s/%s (no profile for it in the profile file)", dc.name, n)
                prof = self.measure(dc, n)
            v.profile = prof
            out[n] = v
        return out

    def measure(self, dc: DeploymentConfig, name: str) -> VariantProfile:
        fp = fingerprint(dc.prototype, dc.params, name)
        if fp not in self._variants:
            self.build(dc, [name], measure_missing=False)
        s = dc.profile
        prof = profile_variant(self._variants[fp], self._families[fp], batch_sizes=list(s.batch_sizes),
                               reps=s.reps, val_n=s.val_n or None, fp=fp, warmup=s.warmup)
        self.by_fp[fp] = self.measured[fp] = prof
        return prof

    def family_info(self, dc: DeploymentConfig) -> dict[str, Any]:
        for n in dc.variants:
            fam = self._families.get(fingerprint(dc.prototype, dc.params, n))
            if fam is not None:
                return fam.info
        return {}


def build_runtime(cfg: DeployConfig, profiles: dict[str, dict[str, VariantProfile]] | None = None, *,
                  measure_missing: bool = True, threads: int | None = None) -> Runtime:
    """A `Runtime` serving every deployment of ``cfg`` (variants trained or loaded, profiles attached or
    measured); its `VariantBuilder` stays on ``runtime.builder`` for hot reconfiguration."""
    builder = VariantBuilder(profiles)
    rt = Runtime(threads=threads or cfg.server.thread_count(), config=cfg, builder=builder)
    for dc in cfg.deployments.values():
        variants = builder.build(dc, measure_missing=measure_missing)
        rt.add_deployment(dc.name, variants, dc.policy, dc.policy_params, batching=dc.batching, slo=dc.slo,
                          config=dc, info=builder.family_info(dc))
    return rt

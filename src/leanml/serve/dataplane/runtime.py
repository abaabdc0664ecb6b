"""The serving runtime: deployments of variants, per-variant queues, routing, admission, hot reconfiguration.

    rt = build_runtime(load_config("examples/adult.toml"))   # leanml.serve.builder
    await rt.start()
    out = await rt.submit("adult", [[...features...]], slo=SLO(latency_ms=50, min_accuracy=0.85))

Request path (all on one event loop; model calls in a thread pool sized to the machine):
parse and validate inputs -> fill in the deployment's default SLO -> the routing policy picks a
variant from the profiles and the live queue state, or refuses (503: no variant can meet the SLO;
429: not with the current queues) -> the variant's queue (429 when full) -> dynamic batching ->
one answer. Hooks for the planner: `set_policy`, `set_plan`, `set_batching`, `set_variants`,
`state`, `add_observer` (called with every answered request, for online profiling).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from leanml.serve.config import Batching, ConfigError, DeployConfig, DeploymentConfig, apply_patch
from leanml.serve.dataplane.batching import Outcome, Pending, VariantWorker
from leanml.serve.dataplane.metrics import ServeMetrics
from leanml.serve.policy import Policy, make_policy
from leanml.serve.types import REFUSE_OVERLOADED, SLO, Request, ServeState, profile_to_dict
from leanml.serve.variants.base import InputError, Variant

log = logging.getLogger("leanml.serve")

Observer = Callable[[Request, Outcome], None]


class UnknownDeployment(KeyError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.message = f"unknown deployment {name!r}; deployments: {sorted(known)}"

    def __str__(self) -> str:
        return self.message


class WrongKind(ValueError):
    """A generate request to a classifier deployment or the reverse."""


@dataclass
class Deployment:
    name: str
    kind: str
    workers: dict[str, VariantWorker]
    policy: Policy
    slo: SLO
    batching: Batching
    config: DeploymentConfig | None = None
    plan: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def variants(self) -> dict[str, Variant]:
        return {n: w.variant for n, w in self.workers.items()}


def merge_slo(req: SLO | None, default: SLO) -> SLO:
    """Per field: the request's value, else the deployment default."""
    if req is None:
        return default
    return SLO(req.latency_ms if req.latency_ms is not None else default.latency_ms,
               req.min_accuracy if req.min_accuracy is not None else default.min_accuracy,
               req.max_energy_j if req.max_energy_j is not None else default.max_energy_j)


def check_labels(label: Any, n: int, model: Any) -> None:
    """Ground-truth labels sent for online profiling: one per input, each one of the model's classes.

    Wrong labels would feed the online profiler's accuracy silently, so they are refused (InputError: 422).
    """
    from leanml.serve.variants.base import ClassifierModel

    labels = label if isinstance(label, list) else [label]
    if len(labels) != n:
        raise InputError(f"label has {len(labels)} entries for {n} inputs: send one label per input")
    if isinstance(model, ClassifierModel):
        bad = [y for y in labels if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < model.n_classes]
        if bad:
            raise InputError(f"label {bad[0]!r} is not a class of this model: labels are integers in "
                             f"[0, {model.n_classes - 1}]")


class Runtime:
    """Serves several deployments; every accepted request gets exactly one `Outcome`."""

    def __init__(self, *, threads: int | None = None, metrics: ServeMetrics | None = None,
                 config: DeployConfig | None = None, builder=None) -> None:
        import os

        self.threads = threads or max(1, os.cpu_count() or 1)
        self.slots = threading.BoundedSemaphore(self.threads)  # model calls at once, over all variants
        self.metrics = metrics or ServeMetrics()
        self.deployments: dict[str, Deployment] = {}
        self.config = config
        self.builder = builder
        self.generation = 0
        self._ids = itertools.count(1)
        self._observers: list[Observer] = []
        self._draining: set[asyncio.Task] = set()
        self._reconf_lock: asyncio.Lock | None = None
        self.started = False

    def add_deployment(self, name: str, variants: dict[str, Variant], policy: str | Policy = "infaas",
                       policy_params: dict[str, Any] | None = None, *, batching: Batching = Batching(),
                       slo: SLO = SLO(), config: DeploymentConfig | None = None,
                       info: dict[str, Any] | None = None) -> Deployment:
        """Add a deployment (before or after `start`)."""
        if name in self.deployments:
            raise ValueError(f"deployment {name!r} already exists")
        if not variants:
            raise ValueError(f"deployment {name!r}: needs at least one variant")
        kinds = {v.kind for v in variants.values()}
        if len(kinds) != 1:
            raise ValueError(f"deployment {name!r}: mixes variant kinds {sorted(kinds)}")
        pol = make_policy(policy, list(variants), policy_params) if isinstance(policy, str) else policy
        dep = Deployment(name, kinds.pop(), {}, pol, slo, batching, config, info=dict(info or {}))
        for n, v in variants.items():
            dep.workers[n] = self._worker(name, v, batching)
        self.deployments[name] = dep
        return dep

    def _worker(self, dep: str, v: Variant, batching: Batching) -> VariantWorker:
        if batching.continuous and v.kind == "generate":  # iteration-level batching, same interface
            from leanml.serve.dataplane.generation_worker import GenerationWorker

            w = GenerationWorker(dep, v, batching, self.slots, on_batch=self._on_batch, metrics=self.metrics)
        else:
            w = VariantWorker(dep, v, batching, self.slots, on_batch=self._on_batch)
        if self.started:
            w.start()
        return w

    # ---- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the batchers on the running loop (idempotent)."""
        if self.started:
            return
        self._reconf_lock = asyncio.Lock()
        for dep in self.deployments.values():
            for w in dep.workers.values():
                w.start()
        self.started = True
        self.metrics.config_generation.set(self.generation)

    async def stop(self) -> None:
        """Answer everything accepted, then stop the batchers and the thread pool."""
        if not self.started:
            return
        await asyncio.gather(*(w.drain() for d in self.deployments.values() for w in d.workers.values()),
                             *self._draining)
        self.started = False

    # ---- the request path -------------------------------------------------------------------------
    def deployment(self, name: str) -> Deployment:
        dep = self.deployments.get(name)
        if dep is None:
            raise UnknownDeployment(name, list(self.deployments))
        return dep

    def state(self, name: str) -> ServeState:
        """What a policy sees: profiles, queue depths, in-flight examples, batch limits, the plan."""
        dep = self.deployment(name)
        ws = dep.workers
        return ServeState(
            profiles={n: w.variant.profile for n, w in ws.items() if w.variant.profile is not None},
            queue_depth={n: w.queued_examples for n, w in ws.items()},
            max_batch={n: w.batching.max_batch for n, w in ws.items()},
            now_s=time.perf_counter(), plan=dep.plan,
            in_flight={n: w.in_flight_examples for n, w in ws.items()},
            max_wait_ms={n: w.batching.max_wait_ms for n, w in ws.items()},
            concurrency={n: w.batching.concurrency for n, w in ws.items()},
        )

    async def submit(self, deployment: str, inputs: Any, *, slo: SLO | None = None, kind: str | None = None,
                     knobs: dict[str, Any] | None = None, label: Any = None,
                     request_class: str = "default") -> Outcome:
        """Route, queue and answer one request. Raises UnknownDeployment / InputError / WrongKind (4xx)."""
        arrival = time.perf_counter()
        dep = self.deployment(deployment)
        if kind is not None and kind != dep.kind:
            verb = "/v1/generate" if dep.kind == "generate" else "/v1/predict"
            raise WrongKind(f"deployment {deployment!r} serves '{dep.kind}' requests: use {verb}/{deployment}")
        first = next(iter(dep.workers.values()))
        parsed = first.variant.model.parse(inputs)
        n = first.variant.model.count(parsed)
        if n > dep.batching.max_batch:
            raise InputError(f"request has {n} examples but deployment {deployment!r} takes at most "
                             f"{dep.batching.max_batch} per request (its max_batch): split it")
        if label is not None:
            check_labels(label, n, first.variant.model)
        eff = merge_slo(slo, dep.slo)
        req = Request(next(self._ids), deployment, inputs, eff, arrival, request_class, label, n, dict(knobs or {}))
        pol = dep.policy
        pol.on_arrival(req, arrival)
        variant = pol.route(req, self.state(deployment))
        m = self.metrics
        if variant is None or variant not in dep.workers:
            overload = pol.refusal_kind() == REFUSE_OVERLOADED
            reason = pol.reason() if variant is None else f"policy chose unknown variant {variant!r}"
            m.requests.labels(deployment, "", "refused_overload" if overload else "refused_slo").inc()
            return self._done(req, Outcome(429 if overload else 503, outcome="refused_overload" if overload
                                           else "refused_slo", reason=reason))
        w = dep.workers[variant]
        fut = asyncio.get_running_loop().create_future()
        deadline = arrival + eff.latency_ms / 1000.0 if eff.latency_ms is not None else None
        if not w.submit(Pending(req, parsed, fut, deadline, arrival)):
            m.requests.labels(deployment, variant, "refused_overload").inc()
            return self._done(req, Outcome(429, variant=variant, outcome="refused_overload",
                                           reason=f"variant {variant} queue is full ({w.batching.max_queue} waiting)"))
        m.queue_depth.labels(deployment, variant).set(len(w.queue))
        out: Outcome = await fut
        m.queue_depth.labels(deployment, variant).set(len(w.queue))
        m.requests.labels(deployment, variant, out.outcome).inc()
        if out.status == 200:
            e2e = time.perf_counter() - arrival
            m.latency.labels(deployment, variant).observe(e2e)
            prof = w.variant.profile
            if eff.latency_ms is not None and e2e * 1000.0 > eff.latency_ms:
                m.slo_misses.labels(deployment, variant, "latency").inc()
            if prof is not None:
                if eff.min_accuracy is not None and prof.accuracy < eff.min_accuracy:
                    m.slo_misses.labels(deployment, variant, "accuracy").inc()
                if prof.energy_j_per_request is not None:
                    m.energy.labels(deployment, variant).inc(prof.energy_j_per_request * n)
                    if eff.max_energy_j is not None and prof.energy_j_per_request > eff.max_energy_j:
                        m.slo_misses.labels(deployment, variant, "energy").inc()
        elif out.outcome == "expired":
            m.slo_misses.labels(deployment, variant, "latency").inc()
        return self._done(req, out)

    def _done(self, req: Request, out: Outcome) -> Outcome:
        for obs in self._observers:
            try:
                obs(req, out)
            except Exception:  # an observer must never break serving
                log.exception("serve observer failed")
        return out

    def _on_batch(self, w: VariantWorker, n: int, model_s: float) -> None:
        self.metrics.batch_size.labels(w.deployment, w.name).observe(n)
        self.metrics.batch_latency.labels(w.deployment, w.name).observe(model_s)

    # ---- hooks for the planner --------------------------------------------------------------------
    def add_observer(self, fn: Observer) -> None:
        """``fn(request, outcome)`` after every answered or refused request (on the event loop: keep it cheap)."""
        self._observers.append(fn)

    def set_policy(self, deployment: str, policy: Policy) -> None:
        self.deployment(deployment).policy = policy
        self._bump()

    def set_plan(self, deployment: str, plan: Any) -> None:
        """The planner's current plan, passed to policies as ``state.plan``."""
        self.deployment(deployment).plan = plan
        self._bump()

    def set_batching(self, deployment: str, batching: Batching, variant: str | None = None) -> None:
        """New batching limits for one variant or all; queued requests are batched under the new limits."""
        dep = self.deployment(deployment)
        if variant is None:
            dep.batching = batching
        targets = [dep.workers[variant]] if variant is not None else list(dep.workers.values())
        for w in targets:
            w.update_batching(batching)
        self._bump()

    def set_variants(self, deployment: str, variants: dict[str, Variant], policy: Policy | None = None) -> None:
        """Serve exactly ``variants``: new ones start, removed ones stop taking requests and drain in the background.

        No await happens between the swap of the variant set and the policy, so no request is ever
        routed to a variant that is no longer served; requests already queued on a removed variant are
        still answered by it.
        """
        dep = self.deployment(deployment)
        kinds = {v.kind for v in variants.values()}
        if not variants or kinds != {dep.kind}:
            raise ValueError(f"set_variants: need at least one {dep.kind!r} variant")
        new_workers = {}
        for n, v in variants.items():
            w = dep.workers.get(n)
            if w is not None and w.variant is v:
                new_workers[n] = w
            else:
                new_workers[n] = self._worker(deployment, v, dep.batching)
        gone = [w for n, w in dep.workers.items() if new_workers.get(n) is not w]
        dep.workers = new_workers
        if policy is not None:
            dep.policy = policy
        for w in gone:
            self._drain_later(w)
        self._bump()

    def _drain_later(self, w: VariantWorker) -> None:
        w.accepting = False
        if self.started:
            t = asyncio.get_running_loop().create_task(w.drain())
            self._draining.add(t)
            t.add_done_callback(self._draining.discard)

    def _bump(self) -> None:
        self.generation += 1
        self.metrics.config_generation.set(self.generation)

    # ---- hot reconfiguration from a config patch --------------------------------------------------
    async def apply_patch(self, patch: dict) -> DeployConfig:
        """Validate ``patch`` against the current config, build what is new (off the loop), then swap.

        Raises ConfigError (nothing changes) on an invalid patch.
        """
        if self.config is None or self.builder is None:
            raise ConfigError("this runtime was not built from a deploy config; use the Python hooks instead")
        async with self._reconf_lock:
            new_cfg = apply_patch(self.config, patch)
            loop = asyncio.get_running_loop()
            built: dict[str, dict[str, Variant]] = {}
            for name, dc in new_cfg.deployments.items():
                if self.config.deployments.get(name) != dc:
                    try:
                        built[name] = await loop.run_in_executor(None, self.builder.build, dc)
                    except (ValueError, KeyError, RuntimeError) as e:
                        raise ConfigError(f"config update: deployment {name!r}: {e}") from None
            # validate every new policy before touching anything
            policies = {n: make_policy(new_cfg.deployments[n].policy, list(vs), new_cfg.deployments[n].policy_params)
                        for n, vs in built.items()}
            # --- swap (no awaits from here on) ---
            for name in list(self.deployments):
                if name not in new_cfg.deployments:
                    dep = self.deployments.pop(name)
                    for w in dep.workers.values():
                        self._drain_later(w)
            for name, vs in built.items():
                dc = new_cfg.deployments[name]
                if name not in self.deployments:
                    self.add_deployment(name, vs, policies[name], batching=dc.batching, slo=dc.slo, config=dc,
                                        info=self.builder.family_info(dc))
                    continue
                dep = self.deployments[name]
                dep.config, dep.slo = dc, dc.slo
                dep.batching = dc.batching
                for w in dep.workers.values():
                    w.update_batching(dc.batching)
                self.set_variants(name, vs, policies[name])
            self.config = new_cfg
            self._bump()
            return new_cfg

    # ---- description ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Deployments, their variants and profiles (for GET /v1/deployments)."""
        out = {}
        for name, dep in self.deployments.items():
            out[name] = {
                "kind": dep.kind, "policy": dep.policy.name,
                "prototype": dep.config.prototype if dep.config else None,
                "default_slo": {k: v for k, v in asdict(dep.slo).items() if v is not None},
                "batching": asdict(dep.batching),
                "info": {k: v for k, v in dep.info.items() if k != "feature_names"},
                "variants": {n: {"technique": w.variant.technique, "params": w.variant.params,
                                 "queue_depth": len(w.queue),
                                 "profile": profile_to_dict(w.variant.profile) if w.variant.profile else None}
                             for n, w in dep.workers.items()},
            }
        return out


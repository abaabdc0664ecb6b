"""The per-request routing policies of the data plane, and the latency prediction they (and the planner's) share.

* `StaticPolicy`: every request to one variant (the baseline; what a one-model server does).
* `InfaasPolicy` (registered as ``infaas``; ``greedy`` is its deprecated alias): INFaaS-style
  (Romero et al., USENIX ATC 2021): among the variants whose profiled
  accuracy meets the request's ``min_accuracy``, whose energy per request meets ``max_energy_j``, and
  whose *predicted* latency (queueing ahead of the request + its own batch, from the profile) meets
  ``latency_ms``, pick the cheapest. Cheapest is by ``cost`` = ``compute`` (ms of model time per
  example at full batch, i.e. the highest-throughput variant), ``latency``, ``energy`` or ``memory``.
  Refusals say why: no variant can meet the SLO even idle (impossible, 503) or only the current
  queues stand in the way (overloaded, 429).

Both subclass `leanml.serve.policy.Policy`; the registry (`leanml.serve.policy.make_policy`) lists them.
"""

from __future__ import annotations

import math

from leanml.serve.policy import Policy
from leanml.serve.types import REFUSE_IMPOSSIBLE, REFUSE_OVERLOADED, Request, ServeState


def predicted_latency_ms(variant: str, state: ServeState, n: int = 1, quantile: str = "p99") -> float:
    """End-to-end latency a new request of ``n`` examples would see on ``variant`` right now.

    Examples ahead of it (queued + in model calls) drain in full batches, ``concurrency`` at a time;
    then its own batch runs. A batch that is not full may wait up to ``max_wait_ms`` (counted from its
    oldest request's arrival, as the batcher does) for more requests: that window runs while the
    queue ahead drains, so the two overlap (the larger counts), and a full batch does not wait. From
    the profile, so it is a prediction.
    """
    prof = state.profiles[variant]
    B = max(1, state.max_batch.get(variant, 1))
    conc = max(1, state.concurrency.get(variant, 1))
    ahead = state.queue_depth.get(variant, 0) + state.in_flight.get(variant, 0)
    full_batches = ahead // B
    own = min(B, ahead % B + n) if ahead else min(B, n)
    rounds = math.ceil(full_batches / conc) if full_batches else 0
    extra_batches = math.ceil(max(0, n - B) / B)  # a request larger than one batch takes several calls
    lat_b = prof.latency.at(B, quantile)
    fill = state.max_wait_ms.get(variant, 0.0) if own < B else 0.0
    return max(rounds * lat_b, fill) + extra_batches * lat_b + prof.latency.at(own, quantile)


def idle_latency_ms(variant: str, state: ServeState, n: int = 1, quantile: str = "p99") -> float:
    prof = state.profiles[variant]
    B = max(1, state.max_batch.get(variant, 1))
    return math.ceil(max(0, n - B) / B) * prof.latency.at(B, quantile) + prof.latency.at(min(n, B), quantile)


class StaticPolicy(Policy):
    """Every request goes to one variant; only an accuracy SLO it cannot meet is refused."""

    name = "static"

    def __init__(self, variants: list[str], variant: str | None = None) -> None:
        if not variants:
            raise ValueError("static policy: no variants served")
        self.variant = variant or variants[0]
        if self.variant not in variants:
            raise ValueError(f"static policy: variant {self.variant!r} is not served (served: {variants})")

    def route(self, request: Request, state: ServeState) -> str | None:
        prof = state.profiles.get(self.variant)
        need = request.slo.min_accuracy
        if need is not None and prof is not None and prof.accuracy < need:
            self._reason = (f"variant {self.variant} has accuracy {prof.accuracy:.4f} < min_accuracy {need} "
                            f"(static routing)")
            return None
        return self.variant


COSTS = ("compute", "latency", "energy", "memory")


class InfaasPolicy(Policy):
    """INFaaS-style: the cheapest variant meeting the request's accuracy, energy and latency needs."""

    name = "infaas"

    def __init__(self, variants: list[str], cost: str = "compute", quantile: str = "p99") -> None:
        if cost not in COSTS:
            raise ValueError(f"infaas policy: cost must be one of {COSTS}, got {cost!r}")
        if quantile not in ("p50", "p99"):
            raise ValueError(f"infaas policy: quantile must be 'p50' or 'p99', got {quantile!r}")
        self.variants, self.cost, self.quantile = list(variants), cost, quantile
        self._reason, self._kind = "", REFUSE_IMPOSSIBLE

    def _cost(self, v: str, state: ServeState, predicted: float) -> tuple[float, float]:
        p = state.profiles[v]
        if self.cost == "latency":
            c = predicted
        elif self.cost == "energy":
            c = p.energy_j_per_request if p.energy_j_per_request is not None else math.inf
        elif self.cost == "memory":
            c = float(p.memory_bytes) if p.memory_bytes is not None else math.inf
        else:
            B = max(1, state.max_batch.get(v, 1))
            c = p.latency.at(B, "p50") / B
        return (c, -p.accuracy)  # ties go to the more accurate variant

    def route(self, request: Request, state: ServeState) -> str | None:
        slo = request.slo
        n = max(1, int(request.n_examples))
        served = [v for v in self.variants if v in state.profiles]
        if not served:
            self._reason, self._kind = "no served variant has a profile (run `leanml serve profile`)", REFUSE_IMPOSSIBLE
            return None
        best, best_cost = None, None
        idle_ok = False
        why: list[str] = []
        for v in served:
            p = state.profiles[v]
            if slo.min_accuracy is not None and p.accuracy < slo.min_accuracy:
                why.append(f"{v}: accuracy {p.accuracy:.4f} < {slo.min_accuracy}")
                continue
            if slo.max_energy_j is not None and (p.energy_j_per_request is None
                                                 or p.energy_j_per_request > slo.max_energy_j):
                e = "unknown" if p.energy_j_per_request is None else f"{p.energy_j_per_request:.3g} J"
                why.append(f"{v}: energy {e} > {slo.max_energy_j} J")
                continue
            if slo.latency_ms is not None:
                if idle_latency_ms(v, state, n, self.quantile) > slo.latency_ms:
                    why.append(f"{v}: {self.quantile} latency {idle_latency_ms(v, state, n, self.quantile):.2f} ms "
                               f"> {slo.latency_ms} ms even when idle")
                    continue
                idle_ok = True
                pred = predicted_latency_ms(v, state, n, self.quantile)
                if pred > slo.latency_ms:
                    why.append(f"{v}: predicted {pred:.2f} ms with current queue > {slo.latency_ms} ms")
                    continue
            else:
                idle_ok = True
                pred = predicted_latency_ms(v, state, n, self.quantile)
            c = self._cost(v, state, pred)
            if best_cost is None or c < best_cost:
                best, best_cost = v, c
        if best is None:
            self._kind = REFUSE_OVERLOADED if idle_ok else REFUSE_IMPOSSIBLE
            self._reason = "no variant meets the SLO: " + "; ".join(why)
        return best

"""The serving-policy contract and its registry: what the runtime, the simulator and the Controller call.

Every routing policy subclasses `Policy` and is called directly through these hooks (no ``hasattr``
probing): a misspelt hook is an ordinary method nobody calls, while a missing ``route`` cannot be
instantiated. The hooks, who calls them, and on which thread:

===================================  ==========================================  ===================
hook                                 called by                                   thread
===================================  ==========================================  ===================
``on_arrival(request, now)``         runtime and simulator, before ``route``     event loop
``route(request, state)``            runtime and simulator, once per request     event loop
``reason()`` / ``refusal_kind()``    runtime and simulator, after a refusal      event loop
``observe(request, outcome, surf)``  `Controller` and simulator, every answer     event loop
``tick(now, surface)``               `Controller` every ``tick_s``, simulator    a worker thread
                                     every ``tick_s`` of simulated time          (live)
===================================  ==========================================  ===================

``tick`` runs off the event loop in a live runtime (a MILP solve must not block requests), so a
policy whose ``tick`` reads state that ``route``/``observe`` write must guard it (the planned
policies take a snapshot under a lock) and swap a new plan in with one assignment.

`ControlSurface` is what ``tick``/``observe`` drive: the simulator is one, the live runtime's
`leanml.serve.control.controller.RuntimeSurface` the other.

The registry maps names to policy classes. Built-in members are listed by import path
(`BUILTIN`, resolved on first use, like packaging entry points), so this base module imports none of
them (they import it); `register_policy` adds others. ``greedy`` is a deprecated alias of ``infaas``.

Each member says which *surface* it routes over (``Policy.surface``): ``runtime`` (a deployment's
variants, in the runtime, the Controller and the request-level simulator; what deploy configs may name)
or ``llm-pool`` (an LLM engine pool with continuous batching: the ``llm-*`` members,
`leanml.serve.sim.llm_policies.LLMPolicy`, run by `leanml.serve.sim.llm_sim.LLMSimulator` through these
same hooks). `known_policies` lists one surface's members.
"""

from __future__ import annotations

import importlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from leanml.serve.types import REFUSE_IMPOSSIBLE, Outcome, Request, ServeState


class ControlSurface(ABC):
    """What a policy's ``tick``/``observe`` may drive: the simulator or a live runtime deployment."""

    cores: int  # model-call threads the deployment may use
    now: float  # the surface's clock (seconds; simulated time in the simulator)

    @abstractmethod
    def state(self) -> ServeState:
        """The routing state now: profiles, queues, batch limits, the plan."""

    @abstractmethod
    def set_plan(self, plan: Any) -> None:
        """Publish a new plan (``state.plan`` from then on)."""

    @abstractmethod
    def set_batching(self, variant: str, max_batch: int, max_wait_ms: float, concurrency: int) -> None:
        """New batching limits for one variant (queued requests are batched under them)."""

    @abstractmethod
    def submit_shadow(self, profiler: Any, request: Request, outcome: Outcome) -> None:
        """Run a served request on the variants ``profiler`` picks, within its budget (online profiling)."""


RUNTIME = "runtime"  # routes a deployment's variants (runtime, Controller, request-level simulator)
LLM_POOL = "llm-pool"  # routes over an LLM engine pool (leanml.serve.sim.llm_sim)


class Policy(ABC):
    """Chooses the variant for each request, or refuses it with a reason; optionally re-plans.

    Subclasses set ``name`` and implement ``route``; the other hooks have working defaults (no-ops,
    and a refusal reason/kind read from ``_reason``/``_kind``, which ``route`` sets when it refuses).
    ``controlled`` says whether ``tick``/``observe`` do anything, so a live replay attaches a
    `Controller` only where it matters.
    """

    name: ClassVar[str] = "policy"
    controlled: ClassVar[bool] = False
    surface: ClassVar[str] = RUNTIME  # what route's state is: a deployment's (RUNTIME) or an LLM pool's
    _reason: str = ""
    _kind: str = REFUSE_IMPOSSIBLE

    @abstractmethod
    def route(self, request: Request, state: ServeState) -> str | None:
        """The served variant for ``request``, or None to refuse it (then ``reason``/``refusal_kind`` say why)."""

    def reason(self) -> str:
        """Why the last refused request was refused."""
        return self._reason

    def refusal_kind(self) -> str:
        """``"impossible"`` (no variant meets the SLO even idle: HTTP 503) or ``"overloaded"`` (429)."""
        return self._kind

    def on_arrival(self, request: Request, now: float) -> None:  # noqa: B027  (an optional hook: no-op)
        """A request arrived (before ``route``), at the surface's clock ``now``."""

    def tick(self, now: float, surface: ControlSurface) -> None:  # noqa: B027
        """Periodic control (re-planning); may run in a worker thread while the loop routes."""

    def observe(self, request: Request, outcome: Outcome, surface: ControlSurface) -> None:  # noqa: B027
        """Feedback after each answered or refused request (online profiling, AIMD)."""


PolicyFactory = Callable[..., Policy]

# name -> "module:attribute" of the built-in members (imported on first use; they import this module)
BUILTIN: dict[str, str] = {
    "static": "leanml.serve.dataplane.routing:StaticPolicy",
    "infaas": "leanml.serve.dataplane.routing:InfaasPolicy",
    "proteus": "leanml.serve.control.policies_adaptive:ProteusPolicy",
    "adaptive": "leanml.serve.control.policies_adaptive:AdaptivePolicy",
    "clipper": "leanml.serve.control.policies_adaptive:ClipperAIMDPolicy",
    "llm-static-accurate": "leanml.serve.sim.llm_policies:LLMStaticAccurate",
    "llm-static-fast": "leanml.serve.sim.llm_policies:LLMStaticFast",
    "llm-infaas": "leanml.serve.sim.llm_policies:LLMInfaasPolicy",
    "llm-proteus": "leanml.serve.sim.llm_planned:LLMProteusPolicy",
    "llm-adaptive": "leanml.serve.sim.llm_planned:LLMAdaptivePolicy",
    "llm-adaptive-nocap": "leanml.serve.sim.llm_planned:AdaptiveNoCapPolicy",
}
# the surface of each built-in member (read without importing it); registered ones say theirs
BUILTIN_SURFACE: dict[str, str] = {n: (LLM_POOL if n.startswith("llm-") else RUNTIME) for n in BUILTIN}
ALIASES: dict[str, str] = {"greedy": "infaas"}  # deprecated names -> the registered one
_REGISTERED: dict[str, PolicyFactory] = {}
_SURFACE: dict[str, str] = {}


def register_policy(name: str, factory: PolicyFactory, surface: str = RUNTIME) -> None:
    """Make ``policy = "<name>"`` usable in deploy configs and ``PUT /v1/config`` (``surface`` RUNTIME) or by
    the LLM simulator (LLM_POOL); ``factory(variants, **policy_params)`` must return a `Policy`."""
    if name in ALIASES:
        raise ValueError(f"policy name {name!r} is an alias of {ALIASES[name]!r}; choose another name")
    if surface not in (RUNTIME, LLM_POOL):
        raise ValueError(f"register_policy {name!r}: surface must be {RUNTIME!r} or {LLM_POOL!r}, got {surface!r}")
    _REGISTERED[name] = factory
    _SURFACE[name] = surface


def known_policies(surface: str | None = RUNTIME) -> list[str]:
    """Every registered name of ``surface`` (None: all), deprecated aliases not included."""
    names = set(BUILTIN) | set(_REGISTERED)
    return sorted(n for n in names if surface is None or _SURFACE.get(n, BUILTIN_SURFACE.get(n)) == surface)


def canonical_name(name: str) -> str:
    """The registered name for ``name``: an alias gives its target, with a DeprecationWarning."""
    if name in ALIASES:
        warnings.warn(f"policy {name!r} is deprecated: it is the INFaaS-style policy, registered as "
                      f"{ALIASES[name]!r}; use that name", DeprecationWarning, stacklevel=3)
        return ALIASES[name]
    return name


def policy_factory(name: str) -> PolicyFactory:
    """The factory registered as ``name`` (an alias resolves, with a warning); ValueError naming the known ones."""
    key = canonical_name(name)
    if key in _REGISTERED:
        return _REGISTERED[key]
    if key not in BUILTIN:
        raise ValueError(f"unknown routing policy {name!r}; known: {known_policies(None)}")
    module, attr = BUILTIN[key].split(":")
    _REGISTERED[key] = vars(importlib.import_module(module))[attr]
    return _REGISTERED[key]


def make_policy(name: str, variants: list[str], params: dict[str, Any] | None = None) -> Policy:
    """Build the policy registered as ``name`` for the served ``variants``; a clear error for unknown
    names, bad ``policy_params`` or a factory that does not return a `Policy`."""
    factory = policy_factory(name)
    try:
        pol = factory(list(variants), **(params or {}))
    except TypeError as e:
        raise ValueError(f"policy {name!r}: bad policy_params {params!r} ({e})") from None
    if not isinstance(pol, Policy):
        raise TypeError(f"policy {name!r}: its factory returned {type(pol).__name__}, not a leanml.serve.policy.Policy")
    return pol

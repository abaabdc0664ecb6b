"""Adaptive serving, split by plane (see docs/serve.md, "Package layout" and "Serve layers").

- ``dataplane``: runtime, batching, routing, HTTP API, metrics;
- ``variants``: model variants, their families and the prototypes that build them;
- ``workload``: traces, their loaders by format, and their description;
- ``control``: profiles, online profiler, queueing model, planner, planned policies, live controller;
- ``sim``: simulator, trace replay, a replay's inputs, the replay study and its report.

At the top: ``types`` (profiles, requests, SLOs), ``policy`` (the policy contract and registry),
``config`` (deploy configs), ``builder`` (variants with their profiles; a runtime from a config),
``ray_backend`` (Ray Serve), ``demo`` (the `leanml demo` serving section). Layer order:
types, policy -> variants -> config -> workload -> dataplane -> control -> builder, ray_backend ->
sim -> demo. Submodules are imported on demand so that the light parts (types, planner, simulator)
never pull in FastAPI, torch or Ray.
"""

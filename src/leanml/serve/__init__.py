"""Adaptive serving, split by plane (see docs/serve.md, "Package layout").

- ``dataplane``: runtime, batching, routing, HTTP API, metrics, Ray Serve backend;
- ``variants``: model variants and the prototypes that build them;
- ``workload``: traces and their description;
- ``control``: profiles, online profiler, queueing model, planner, planned policies, live controller;
- ``sim``: simulator, trace replay, the replay study and its report.

Shared by several planes, at the top: ``types`` (profiles, requests, SLOs), ``config`` (deploy
configs), ``builder`` (variants with their profiles), ``demo`` (the `leanml demo` serving section).
Submodules are imported on demand so that the light parts (types, planner, simulator) never pull
in FastAPI, torch or Ray.
"""

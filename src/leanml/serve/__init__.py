"""Adaptive serving: model variants, profiles, routing, the asyncio runtime, HTTP API, planner, simulator.

Submodules are imported on demand (``leanml.serve.runtime``, ``leanml.serve.http``, ...) so that
the light parts (types, planner, simulator) never pull in FastAPI, torch or Ray.
"""

"""The data plane: what every request goes through (runtime, batching, routing, HTTP API, metrics).

Submodules are imported on demand (``leanml.serve.dataplane.http`` pulls in FastAPI), so importing
the package costs nothing. The Ray Serve backend, which assembles whole runtimes from a config, is
``leanml.serve.ray_backend``.
"""

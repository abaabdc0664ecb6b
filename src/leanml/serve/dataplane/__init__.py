"""The data plane: what every request goes through (runtime, batching, routing, HTTP API, metrics, Ray backend).

Submodules are imported on demand (``leanml.serve.dataplane.http`` pulls in FastAPI,
``leanml.serve.dataplane.ray_backend`` Ray), so importing the package costs nothing.
"""

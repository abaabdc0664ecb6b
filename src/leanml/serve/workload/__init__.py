"""Workloads: traces (public formats, any CSV/JSONL, synthetic arrivals, rescaling) and their description.

``leanml.serve.workload.traces`` loads and generates them; ``leanml.serve.workload.describe``
summarizes and plots them. Submodules are imported on demand.
"""

"""The control plane: measures variants and live traffic, plans the configuration, and applies it.

Profiles (offline measurement and the profile file), the online profiler, the queueing model, the
MILP planner, the planned policies and the live `Controller` that ticks them inside a runtime.
Submodules are imported on demand.
"""

"""The control plane: measures variants and live traffic, plans the configuration, and applies it.

Profiles (offline measurement and the profile file), the online profiler, the queueing model, the
MILP planner and the planned policies.
Submodules are imported on demand.
"""

"""Simulation and replay: the discrete-event simulator, trace replay against a live server, the study, its report.

``leanml.serve.sim.simulator`` mirrors the data plane without running models;
``replay`` sends a trace open-loop to a loopback server; ``replay_study`` runs policies through
both; ``replay_report`` writes the result. Submodules are imported on demand.
"""

"""Abstract hardware model: devices and systems as data, calibration, a roofline cost model, placement.

    from leanml.hw import get_device, trace_train_step, predict
    p = predict(trace_train_step(model, x, y), "h200")   # time_s, bound, energy_j (estimate)
"""

from leanml.hw.catalog import get_device, get_system, load_catalog, local_device_path, write_device
from leanml.hw.collectives import collective_time
from leanml.hw.costmodel import CostModel, OpEstimate, OpSpec
from leanml.hw.errors import HwError, SchemaError, UnknownDeviceError
from leanml.hw.placement import Placement, WorkItem, greedy_lpt, milp, place, round_robin
from leanml.hw.predict import Prediction, Projection, predict, predict_latency, project_cost
from leanml.hw.schema import Device, Efficiency, Link, MemoryLevel, Power, System
from leanml.hw.trace import Profile, trace_callable, trace_inference, trace_per_example_grads, trace_train_step

__all__ = [
    "CostModel", "Device", "Efficiency", "HwError", "Link", "MemoryLevel", "OpEstimate", "OpSpec", "Placement",
    "Power", "Prediction", "Profile", "Projection", "SchemaError", "System", "UnknownDeviceError", "WorkItem",
    "collective_time", "get_device", "get_system", "greedy_lpt", "load_catalog", "local_device_path", "milp",
    "place", "predict", "predict_latency", "project_cost", "round_robin", "trace_callable", "trace_inference",
    "trace_per_example_grads", "trace_train_step", "write_device",
]

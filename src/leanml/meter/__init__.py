"""Cost metering: wall and CPU time, energy (RAPL, NVML), peak memory, FLOPs."""

from leanml.meter.cost import UNAVAILABLE, Cost
from leanml.meter.energy import NvmlReader, RaplReader
from leanml.meter.meter import Meter, measure, stage

__all__ = ["UNAVAILABLE", "Cost", "Meter", "NvmlReader", "RaplReader", "measure", "stage"]

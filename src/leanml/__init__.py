"""leanml: resource-efficient machine learning, measured end to end."""

__version__ = "0.1.0"

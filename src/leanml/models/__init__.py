"""Model builders and a metered fit/evaluate loop."""

from leanml.models.builders import build_cnn, build_mlp
from leanml.models.train import FitResult, evaluate, fit, predict_logits

__all__ = ["FitResult", "build_cnn", "build_mlp", "evaluate", "fit", "predict_logits"]

"""The end-to-end data selection cost study: grids, Parquet results with resume, reports."""

from leanml.bench.projection import ProjectionError, project_rows
from leanml.bench.report import pareto_front, write_report
from leanml.bench.results import ResultTable
from leanml.bench.study import StudyPlan, plan_study, run_study, summarize
from leanml.bench.suites import SUITES, Suite, SuiteData, get_suite

__all__ = ["SUITES", "ProjectionError", "ResultTable", "StudyPlan", "Suite", "SuiteData", "get_suite", "pareto_front",
           "plan_study", "project_rows", "run_study", "summarize", "write_report"]

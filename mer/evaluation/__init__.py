"""Reports of training runs: pooled metrics, tables, MEGC log and plots from saved fold predictions."""
from mer.evaluation.report import IncompleteRun, collect, compute_metrics, format_table, selection_of, write_report

__all__ = ["IncompleteRun", "collect", "compute_metrics", "format_table", "selection_of", "write_report"]

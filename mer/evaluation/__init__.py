"""Reports of training runs: pooled metrics, tables, MEGC log and plots from saved fold predictions."""

from mer.evaluation.report import (
    DamagedFold,
    IncompleteRun,
    collect,
    compute_metrics,
    format_table,
    selection_of,
    write_report,
)

__all__ = ["DamagedFold", "IncompleteRun", "collect", "compute_metrics", "format_table", "selection_of", "write_report"]

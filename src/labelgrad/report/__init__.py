"""Reporting: GradMonitor export (CSV, JSON, TensorBoard), figures, and the HTML report.

Matplotlib and TensorBoard are imported only when a figure or an event file is written.
"""

from labelgrad.report._atomic import atomic_path, atomic_write_text, check_writable_dir
from labelgrad.report.conflicts import label_gramian
from labelgrad.report.export import log_monitor_tensorboard, monitor_records, save_monitor
from labelgrad.report.html import Section, write_report
from labelgrad.report.plots import plot_conflicts, plot_grad_norm_history, plot_per_class_accuracy

__all__ = [
    "Section",
    "atomic_path",
    "atomic_write_text",
    "check_writable_dir",
    "label_gramian",
    "log_monitor_tensorboard",
    "monitor_records",
    "plot_conflicts",
    "plot_grad_norm_history",
    "plot_per_class_accuracy",
    "save_monitor",
    "write_report",
]

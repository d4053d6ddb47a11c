"""GradMonitor's data export (CSV, JSON, TensorBoard), label Gramians, and atomic file writes.

This is library code: it imports torch only (TensorBoard when an event file is written). The
figures and the HTML report belong to the application, :mod:`labelgrad.app`.
"""

from labelgrad.report._atomic import atomic_path, atomic_write_text, check_writable_dir
from labelgrad.report.conflicts import label_gramian
from labelgrad.report.export import log_monitor_tensorboard, monitor_records, save_monitor

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "check_writable_dir",
    "label_gramian",
    "log_monitor_tensorboard",
    "monitor_records",
    "save_monitor",
]

"""The package version: the one source read by the metadata, the command and the reports."""

__version__ = "0.3.0.dev0"

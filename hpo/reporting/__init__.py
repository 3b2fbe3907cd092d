"""Reporting: TensorBoard logs, schedule plots, schedule files and the text of the run's records and
tables.  Reads results; computes none."""

"""The runtime the library runs on: devices and dtypes, CPU threads, deterministic kernels, process groups
for data-parallel runs, optional extras, and atomic file writes.  Nothing here knows about
hyperparameters."""

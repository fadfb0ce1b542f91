"""What people read: the run report, overlays, plots and the summary of a pipeline run."""

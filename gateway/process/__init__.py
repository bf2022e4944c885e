"""The process: run, workers, signals, reload, and the start and stop of everything else."""

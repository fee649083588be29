"""The process: command line, pre-forked workers, signals."""

"""One module per MLproject entry point: `<Stage>Config` (defaults live there) and `run_<stage>(cfg)`."""

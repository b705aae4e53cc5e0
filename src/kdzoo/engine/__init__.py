"""The engine: places a program on its device and processes, runs its phases, records the run."""

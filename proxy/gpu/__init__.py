"""GPU memory: plain snapshots (pure) and the probe that reads NVML or the settings (I/O)."""

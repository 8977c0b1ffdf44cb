"""llama.cpp as the memory oracle for the footprint estimator: build, synthetic models, measurement."""

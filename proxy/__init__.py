"""vramgate: keep every Ollama model load entirely in GPU memory."""

__version__ = "0.1.0"

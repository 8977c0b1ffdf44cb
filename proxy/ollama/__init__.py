"""Knowledge of Ollama: its Go decoding of requests, version rules, model names, registry, one API client."""

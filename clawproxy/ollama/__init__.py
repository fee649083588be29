"""The Ollama client layer: the upstream connection and pool, the NDJSON reader, the model
catalog and model control."""

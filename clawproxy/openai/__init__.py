"""The OpenAI API layer: request mapping, message checks, the SSE re-framer, the whole-reply
aggregator, the model list."""

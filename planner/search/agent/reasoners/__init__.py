"""Reasoners answer the propose node: `BuiltinReasoner` (no LLM) and `LLMReasoner`."""

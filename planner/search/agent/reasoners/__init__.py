"""Reasoners answer the graph's nodes: `BuiltinReasoner` (no LLM) and `LLMReasoner`."""

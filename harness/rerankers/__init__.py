"""Reranker families. Each module defines a config schema and a class; see harness.registry."""

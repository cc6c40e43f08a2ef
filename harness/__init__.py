"""An evaluation harness for LLM rerankers. Importing it loads no model library."""

__version__ = "0.1.0"

"""Readers and writers of the formats met in the wild: TREC, BEIR, RankGPT JSON, MTEB JSON."""

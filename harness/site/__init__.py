"""The results site (`python -m harness report`): bundles, published tables and comparisons as static
pages that open from disk, with a judgment reader for each query. See `harness.site.build`."""

"""Metrics (perplexity, KL, top-1) and generation."""

"""Exporters: one per format, each reading the same quantized codes and scales (never re-quantizing)."""

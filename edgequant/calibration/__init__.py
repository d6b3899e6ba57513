"""Calibration data: sources, chat / think rendering, reproducible sampling."""

"""Fractal Workbook library."""

"""Guided-sampling audit (SCIENCE.md section 4)."""

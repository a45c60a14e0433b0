"""Fitting the analytic cost model to measurements; calibration JSON files ship beside this module."""

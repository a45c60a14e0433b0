"""Fitting the analytic cost model to measurements (the parameter types live in ``autoq.overlay.calibration_params``)."""

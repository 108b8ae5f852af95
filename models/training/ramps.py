"""Ramp-up schedules used by the trainer (defined with the losses; re-exported here)."""

from models.losses.ramps import linear_schedule, sigmoid_rampup

__all__ = ["linear_schedule", "sigmoid_rampup"]

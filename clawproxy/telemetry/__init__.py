"""What operators see: live state and its windows, metrics, GPU sampling, alerts, logs."""

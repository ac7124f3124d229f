"""What every layer may use: logging, metrics, test hooks."""

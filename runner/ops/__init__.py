"""Operating runs: status, list, watch, logs, pull, delete, cost, and notifications of transitions."""

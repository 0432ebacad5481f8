"""ServerApp: validated run config, task and strategy, the rounds, results and plots."""

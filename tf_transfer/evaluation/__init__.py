"""Evaluation: metrics from one prediction pass, plots (Matplotlib Figures) and the self-contained
report.html."""

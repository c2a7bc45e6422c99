"""The paper's protocol as one command: plans (plan.py), the runner's outputs (results.csv, costs.csv,
runs.csv, domains.csv), the report's tables and plots (report.py), and `pnlm advise` (advise.py)."""

"""Evaluation: the paper's tables and sample grids (``evaluate``), the evaluator the
training loop calls (``periodic_eval``) and the metrics (``metrics/``).

Uses Core, the checkpoint loader and the data pipeline; never the trainer (the trainer
calls evaluation).
"""

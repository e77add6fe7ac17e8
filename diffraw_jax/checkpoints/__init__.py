"""The one checkpoint loader: orbax workdirs (``checkpointing``) and weights folders,
loading and export (``weights``).

Uses Core (``models.factory``) and ``runtime``; never the data pipeline, training or
evaluation. Training writes checkpoints through ``checkpointing``; inference and
evaluation read them through ``weights``.
"""

"""Training: ``train`` (create_train_state / train_step / train_and_evaluate), the
one-step student's loss (``distill``) and the workdir lock (``workdir_lock``).

The top layer: uses Core, data, the checkpoint loader and evaluation. Nothing in the
package imports it but ``main.py``.
"""

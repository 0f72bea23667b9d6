"""Training, evaluation and prediction over timm's components (``biformer train/eval/predict``).

Training: ``train`` (the command), ``train_args`` (its flags), ``recipe`` (reference and demo
hyper-parameters), ``config`` (the run's recipe and data options, resume rules), ``session``
(building a run), ``run_state`` (what a checkpoint saves), ``epoch`` (one epoch), ``trainer``
(epochs, validation, checkpoints), ``run_folder`` (the output folder), ``signals``
(SIGTERM/SIGINT), ``rng`` (random state), ``logging`` (CSV, TensorBoard, summary),
``distributed`` (torchrun). Data: ``digits`` (the embedded default), ``folders`` (image folders,
timm datasets), ``sampling`` (reproducible loaders), ``transforms``, ``images``.
Evaluation: ``evaluate`` (the loop), ``eval_command``, ``predict``.
"""

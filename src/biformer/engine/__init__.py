"""Training, evaluation and prediction over timm's components (``biformer train/eval/predict``).

Modules: ``recipe`` (reference and demo hyper-parameters), ``data`` (embedded digits, image
folders, reproducible loaders), ``modeling`` (models by name, weight loading), ``checkpointing``
(atomic, resumable checkpoints), ``distributed`` (torchrun), ``logging`` (CSV, TensorBoard,
summary), ``train``, ``evaluate``, ``predict`` (the commands).
"""

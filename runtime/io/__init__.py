"""What a run reads and writes: checkpoints (``checkpoint.py``), the exported model
(``artifacts.py``, ``hf_export.py``), metrics and timings (``telemetry.py``) and TensorBoard
(``tensorboard.py``)."""

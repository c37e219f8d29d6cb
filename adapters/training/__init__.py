"""Fine-tuning a Qwen2-VL-family model on a medgrit dataset (the ``train`` extra).

torch, transformers, peft and trl are imported inside functions only, so importing these modules
(as the Prefect flow and ``medgrit serve`` do) costs nothing until a step runs.
"""

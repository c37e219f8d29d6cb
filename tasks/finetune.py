"""Prefect tasks of the finetune flow: thin wrappers over ``medgrit.adapters.training.run``.

One task per step. Each step is recorded in the run's ``finetune.json`` once done, so a flow run
started again (or retried) skips what is done and training resumes from its last checkpoint.
Nothing is retried by Prefect: a failed step is a bug or a resource to fix (memory, disk, a
model that cannot be loaded), and a retry of a training step would repeat hours of work.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from medgrit.adapters.training import run
from medgrit.schemas.finetune import FinetuneConfig


@task(name="prepare_examples", cache_policy=NO_CACHE)
def prepare_examples(config: FinetuneConfig) -> dict:
    """Train examples in the model's box format, tokenised (loss on the answers only)."""
    return run.prepare_examples(config)


@task(name="train_model", cache_policy=NO_CACHE)
def train_model(config: FinetuneConfig) -> dict:
    """TRL's SFTTrainer on the examples; the adapter (or model) and processor are saved."""
    return run.train_model(config)


@task(name="predict_test", cache_policy=NO_CACHE)
def predict_test(config: FinetuneConfig) -> dict:
    """Greedy answers to the test turns per task, and the baseline's, as JSONL."""
    return run.predict_test(config)


@task(name="evaluate_predictions", cache_policy=NO_CACHE)
def evaluate_predictions(config: FinetuneConfig) -> dict:
    """BiRD's metrics per task and modality for the model and the baseline."""
    return run.evaluate_predictions(config)

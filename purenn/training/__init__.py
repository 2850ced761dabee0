"""Training, evaluation and prediction: the Python API behind the ``purenn`` command.

Typical use::

    from purenn.training import make_config, train, resume, evaluate, predict

    result = train(make_config("train.toml", {"data_dir": "data/pv", "epochs": 10}))
    resume("runs/my-run")                           # after a crash, Ctrl-C or kill
    report = evaluate("runs/my-run/best.npz", "data/holdout")
    predict("runs/my-run/best.npz", ["leaf.jpg"], top_k=3)
"""

from purenn.inference.prediction import predict
from purenn.training.callbacks import EarlyStopping
from purenn.training.config import ConfigError, TrainConfig, make_config
from purenn.training.demo import run_demo
from purenn.training.evaluation import evaluate, write_report
from purenn.training.fit import RunResult, resume, train
from purenn.training.metrics import (
    accuracy,
    classification_report,
    confusion_matrix,
    top_k_accuracy,
)
from purenn.training.progress import Progress
from purenn.training.rundir import RunDir, RunDirError
from purenn.training.trainer import NonFiniteLossError, Trainer, TrainingInterrupted

__all__ = [
    "ConfigError",
    "EarlyStopping",
    "NonFiniteLossError",
    "Progress",
    "RunDir",
    "RunDirError",
    "RunResult",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "accuracy",
    "classification_report",
    "confusion_matrix",
    "evaluate",
    "make_config",
    "predict",
    "resume",
    "run_demo",
    "top_k_accuracy",
    "train",
    "write_report",
]

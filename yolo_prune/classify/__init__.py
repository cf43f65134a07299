"""Classification: training a Darknet classifier (LeNet-5, ResNet-56) on in-memory data."""

from yolo_prune.classify.train import ClassifyTrainConfig, train_classifier

__all__ = ["ClassifyTrainConfig", "train_classifier"]

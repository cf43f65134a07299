"""Datasets and readers: MNIST, CIFAR-10 (and COCO / YOLO-txt, video io)."""

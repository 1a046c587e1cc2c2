"""SSD in TensorFlow 2 / Keras 3: network, anchors, box coding, post-processing, weights I/O, training.

Pure model code: nothing here imports kserve. Box and anchor conventions: :mod:`predictor.ssd.boxes`.
"""

from predictor.ssd.anchors import generate_anchors
from predictor.ssd.config import ExtraBlock, FeatureLayer, SSDConfig, ssd300_vgg16, ssd512_vgg16, ssd_tiny
from predictor.ssd.detector import Detector, ImageDetections, configure_devices, split_detections
from predictor.ssd.labels import VOC_LABELS
from predictor.ssd.network import build_network, conv_macs
from predictor.ssd.weights import ModelLoadError, load_model, save_model_dir

__all__ = [
    "VOC_LABELS",
    "Detector",
    "ExtraBlock",
    "FeatureLayer",
    "ImageDetections",
    "ModelLoadError",
    "SSDConfig",
    "build_network",
    "configure_devices",
    "conv_macs",
    "generate_anchors",
    "load_model",
    "save_model_dir",
    "split_detections",
    "ssd300_vgg16",
    "ssd512_vgg16",
    "ssd_tiny",
]

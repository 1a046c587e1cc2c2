"""SSD in TensorFlow 2 / Keras 3: network, anchors, box coding, post-processing, weights I/O, training.

Pure model code: nothing here imports kserve. Box and anchor conventions: :mod:`predictor.ssd.boxes`.

Inference:

- ``config``: :class:`SSDConfig`, the architecture (a new variant is a new config, not new code);
- ``network``: the Keras network; ``anchors``: the default boxes; ``boxes``: box formats and coding;
- ``preprocess``: the TF1 WARP resize and mean subtraction;
- ``postprocess``: in-graph decoding, threshold, top-k and per-class NMS (``BatchedDetections``);
- ``detector``: :class:`Detector`, the compiled function over batch buckets (``ImageDetections``);
- ``weights``: balancap checkpoints and project model directories; ``export``: SavedModel signatures;
- ``labels``: class names.

Training (the command line is :mod:`predictor.tools.train`):

- ``matching``: ground truth -> per-anchor labels and encoded offsets;
- ``loss``: the multibox loss with hard-negative mining;
- ``augment``: photometric distortion, zoom-out, random crop, flip;
- ``trainer``: :class:`~predictor.ssd.trainer.Trainer`, the ``tf.data`` pipeline and training loop.
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

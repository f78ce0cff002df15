"""Backbones other than the torchvision ResNet-18 of :mod:`fernoise.model`.

- :mod:`fernoise.backbones.dlib_resnet29`: dlib's face-recognition ResNet-29
  (``dlib_face_recognition_resnet_model_v1``), loaded from the face-api (TensorFlow.js) copy
  of its weights.

Importing this package does not import torch; the modules do.
"""

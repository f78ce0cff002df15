"""MTCNN face detection (facenet-pytorch), batched by image size, on the GPU when there is one.

:class:`Detector` holds the three MTCNN nets (weights ship inside facenet-pytorch; nothing is
downloaded). :meth:`Detector.detect` takes a list of ``(H, W, 3)`` uint8 RGB arrays of any
sizes, groups the arrays of equal size into batches, and calls facenet-pytorch's
``detect_face`` directly (not ``MTCNN.forward``, whose per-image crop/``post_process`` path
fernoise does not use). Its ragged ``dtype=object`` outputs are converted to plain float
arrays, one :class:`Detection` per image, faces sorted by probability (highest first).

torch and facenet-pytorch are imported lazily, so importing this module is cheap.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fernoise.devices import resolve_device

# Upper bound on the pixels of one detection batch (bounds memory on large photos).
MAX_BATCH_PIXELS = 24_000_000
MAX_BATCH_IMAGES = 512


@dataclass(frozen=True)
class Detection:
    """Faces found in one image: ``boxes (n, 4)`` x1 y1 x2 y2, ``probs (n,)``,
    ``landmarks (n, 5, 2)`` (left eye, right eye, nose, left and right mouth corner), in the
    pixels of the array given to :meth:`Detector.detect`, sorted by ``probs`` descending."""

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.probs)

    def scaled(self, factor: float) -> Detection:
        """The same faces with coordinates multiplied by ``factor`` (maps a downscaled copy back)."""
        if factor == 1.0:
            return self
        return Detection(self.boxes * factor, self.probs, self.landmarks * factor)


EMPTY = Detection(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2)))


def _channels_last(net, device):
    """``net`` on ``device`` taking its input in channels-last memory order.

    The MTCNN nets are ~2x faster on CPU in channels-last order than in the default NCHW
    (measured: P-net on a 612x462 level 60 -> 33 ms, R-net on 1000 boxes 451 -> 172 ms);
    the outputs are the same up to float rounding.
    """
    import torch

    class ChannelsLast(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.contiguous(memory_format=torch.channels_last))

    net = net.to(device).eval()
    if torch.device(device).type == "cpu":
        net = net.to(memory_format=torch.channels_last)
        return ChannelsLast(net).eval()
    return net


class Detector:
    """The MTCNN nets on one device. Build it once and reuse it (loading costs ~0.5 s)."""

    def __init__(self, device: str = "auto", threads: int | None = 1):
        import torch
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

        self.device = torch.device(resolve_device(device))
        # MTCNN is many small ops (a pyramid of tiny convolutions, one resample per candidate
        # box): on CPU, intra-op threads mostly wait on each other (2.5x slower with 2 threads
        # than 1 on a busy 2-core machine). Detection runs single-threaded by default while
        # the align workers decode and save on the other cores; None keeps torch's setting.
        self.threads = threads if self.device.type == "cpu" else None
        self.pnet = _channels_last(PNet(), self.device)
        self.rnet = _channels_last(RNet(), self.device)
        self.onet = _channels_last(ONet(), self.device)

    def _detect_batch(
        self, batch: np.ndarray, min_face_size: int, thresholds, factor: float
    ) -> list[Detection]:
        import torch
        from facenet_pytorch.models.utils.detect_face import detect_face

        with torch.inference_mode():
            boxes, points = detect_face(
                # detect_face permutes NHWC -> NCHW; an NHWC *view* of a contiguous NCHW
                # float tensor keeps its per-box crops contiguous (faster resampling).
                torch.from_numpy(batch)
                .to(self.device)
                .permute(0, 3, 1, 2)
                .float()
                .contiguous()
                .permute(0, 2, 3, 1),
                min_face_size,
                self.pnet,
                self.rnet,
                self.onet,
                list(thresholds),
                factor,
                self.device,
            )
        out = []
        for b, p in zip(boxes, points, strict=True):
            b = np.asarray(b, dtype=np.float64).reshape(-1, 5)
            p = np.asarray(p, dtype=np.float64).reshape(-1, 5, 2)
            order = np.argsort(-b[:, 4], kind="stable")
            out.append(Detection(b[order, :4], b[order, 4], p[order]))
        return out

    def detect(
        self,
        arrays: Sequence[np.ndarray],
        *,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
    ) -> list[Detection]:
        """One :class:`Detection` per ``(H, W, 3)`` uint8 RGB array, in the order given.

        Arrays of equal shape are stacked into batches (at most ``MAX_BATCH_IMAGES`` images
        and ``MAX_BATCH_PIXELS`` pixels each). An image smaller than 12 px on a side gets no
        faces (MTCNN's smallest window).
        """
        results: list[Detection | None] = [None] * len(arrays)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, a in enumerate(arrays):
            if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 12:
                results[i] = EMPTY
            else:
                groups[a.shape].append(i)
        parts = []
        for shape, idx in groups.items():
            per = max(1, min(MAX_BATCH_IMAGES, MAX_BATCH_PIXELS // (shape[0] * shape[1])))
            parts += [idx[s : s + per] for s in range(0, len(idx), per)]

        def run(part: list[int]) -> list[Detection]:
            batch = np.stack([np.ascontiguousarray(arrays[i], dtype=np.uint8) for i in part])
            try:
                return self._detect_batch(batch, min_face_size, thresholds, factor)
            except RuntimeError:
                # facenet's batch path can fail on a degenerate candidate box (an empty
                # torch.cat); one image at a time isolates it.
                dets = []
                for one in batch:
                    try:
                        dets.extend(
                            self._detect_batch(one[None], min_face_size, thresholds, factor)
                        )
                    except RuntimeError:
                        dets.append(EMPTY)
                return dets

        import torch

        saved = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            # On the CPU, batches run side by side, each single-threaded: torch releases the
            # GIL inside its ops, and whole batches in parallel beat intra-op threads on
            # MTCNN's many small ops (the thread count is set once here, never per thread).
            lanes = min(len(parts), os.cpu_count() or 1) if self.threads else 1
            if lanes > 1:
                with ThreadPoolExecutor(lanes) as pool:
                    found = list(pool.map(run, parts))
            else:
                found = [run(part) for part in parts]
        finally:
            if self.threads:
                torch.set_num_threads(saved)
        for part, dets in zip(parts, found, strict=True):
            for i, d in zip(part, dets, strict=True):
                results[i] = d
        return [r if r is not None else EMPTY for r in results]


def make_detector(device: str = "auto", threads: int | None = 1) -> Detector:
    """A :class:`Detector` on ``device`` (``auto``: the GPU when there is one)."""
    return Detector(device, threads)

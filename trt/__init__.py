"""Deployment side of arsel: ONNX export, TensorRT engine build and the TensorRT runtime backend.

``trt.export``  torch -> ONNX (names of ``engine.contract``), checked and compared in ONNX Runtime.
``trt.export_no_mask`` the internal no-mask decoder pair of ``OrtBackend`` (tied to its decoder's sha256).
``trt.build``   ONNX -> TensorRT engine (fp32/fp16/int8), cached by ONNX hash + TRT version + GPU.
``trt.runtime`` ``TrtBackend``: the ``engine.backends.Backend`` interface on a TensorRT engine.
``trt.cli``     the ``arsel export`` and ``arsel build-engine`` verbs.

``tensorrt`` and ``onnxruntime`` are imported inside the functions that use them, so importing this
package needs neither (``pip install arsel[trt]`` adds TensorRT).
"""

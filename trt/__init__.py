"""TensorRT side of arsel: engine build and the TensorRT runtime backend (ONNX export: ``engine.export``).

``trt.build``   ONNX -> TensorRT engine (fp32/fp16/int8), cached by ONNX hash + TRT version + GPU.
``trt.runtime`` ``TrtBackend``: the ``engine.backends.Backend`` interface on a TensorRT engine.
``trt.cli``     the ``arsel build-engine`` verb.

``tensorrt`` is imported inside the functions that use it, so importing this package does not need
it (``pip install arsel[trt]`` adds TensorRT).
"""

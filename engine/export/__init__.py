"""ONNX export of the SAM-family models, with the tensor names of ``engine.contract``.

``engine.export.onnx_export``   ``export_model``: encoder + decoder ONNX, checked and compared with torch.
``engine.export.no_mask``       the internal no-mask decoder pair of ``OrtBackend`` (tied to its decoder's sha256).
``engine.export.no_mask_files`` that pair's file names and currency check, without torch (``OrtBackend`` reads it).
``engine.export.common``        tolerances, dynamic axes, the export call, checker and ONNX Runtime session.
``engine.export.prompts``       ``realistic_prompts``: decoder prompt arrays for checks, tests and benchmarks.

This package imports nothing, so ``OrtBackend`` can read ``no_mask_files`` without loading torch;
import the modules directly. TensorRT (``trt/``) builds engines from these files.
"""

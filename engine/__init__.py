"""arsel engine: SAM-family models, predictor, backends, stream engine and 3D lifting.

Importing ``engine`` is cheap and never imports onnxruntime, tensorrt, open3d or pyrealsense2;
those load where they are used.
"""

__version__ = "0.1.0"

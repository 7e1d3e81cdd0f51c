"""Calibration (numpy, OpenCV): ``calibration.intrinsics`` holds camera intrinsics JSON I/O and
chessboard / ChArUco calibration; sibling modules hold the other calibrations (e.g. gaze)."""

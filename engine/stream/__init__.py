"""The stream engine: frame sources, prompt sources, keyframe scheduling, tracking, latency.

Modules (import them directly; this package imports nothing so ``engine.gaze`` can use
``engine.stream.events`` without a cycle):

* ``sources``: ``CameraSource``, ``VideoSource``, ``ImageFolderSource``, ``SyntheticSource``, ``open_source``
  (the base ``FrameSource`` and the source registry live in ``engine.frame_source``)
* ``events``: ``Prompt``, ``CursorEvent``, ``SelectEvent``, ``ReleaseEvent``, ``HoverEvent``
* ``prompt_sources``: ``CursorPrompts``, ``GazePrompts``, ``GazeReplay``
* ``scheduler``: ``KeyframePolicy``, ``AsyncEncoder``
* ``tracker``: ``Tracker``, ``TrackerConfig``
* ``object_motion``: keyframe->frame motion per object (global fit as fallback), ``map_prompt``
* ``decoding``: one prompt on the keyframe embedding, OpenCV upsampling
* ``proposals``: point -> multi-scale box proposals for box-only checkpoints
* ``engine``: ``StreamEngine`` (``engine_config``: ``EngineConfig``; ``keyframe_step``, ``guard_steps``: its steps);
  ``results``: ``StepResult``, ``MaskResult``
* ``latency``: ``LatencyRecorder``; ``hud``: ``draw_hud``
* ``evaluate``: mean J on DAVIS-layout sequences, ``CachingBackend``; ``live_eval``: the same under a
  live server's schedule (frames skipped, keyframes adopted late), deterministic
* ``track_cli``: the ``arsel track`` verb; ``track_output``: its masks, overlay and metrics
"""
